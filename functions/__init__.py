"""Thin Lambda handlers: parse the event, call the core, return."""
