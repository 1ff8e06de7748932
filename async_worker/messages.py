"""What arrives on the jobs queue: S3 ObjectCreated events for job inputs (presigned
uploads and inline bodies alike), or a plain ``{"job_id": ...}`` (redrive, requeue)."""

from __future__ import annotations

import json
import re
from urllib.parse import unquote_plus

_INPUT_KEY = re.compile(r"^tenants/(?P<tenant>[^/]+)/jobs/(?P<job>job_[0-9a-f]+)/input$")


def job_ids(body: str) -> list[str]:
    """The job ids a message is about; empty for messages to drop (S3 test events,
    objects that are not job inputs, garbage)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return []
    if not isinstance(doc, dict):
        return []
    if isinstance(doc.get("job_id"), str):
        return [doc["job_id"]]
    ids = []
    for record in doc.get("Records", []) if isinstance(doc.get("Records"), list) else []:
        try:
            key = unquote_plus(record["s3"]["object"]["key"])
        except (KeyError, TypeError):
            continue
        if not str(record.get("eventName", "")).startswith("ObjectCreated"):
            continue
        match = _INPUT_KEY.match(key)
        if match:
            ids.append(match["job"])
    return ids
