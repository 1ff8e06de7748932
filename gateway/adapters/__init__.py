"""Adapters: the only place SDKs and network clients appear. Each takes its client in the
constructor and translates SDK errors into core errors in one place."""
