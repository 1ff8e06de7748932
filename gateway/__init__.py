"""The gateway's pure core: models, errors, ports and decision logic.

Nothing in this package (outside ``adapters``) imports an SDK, an HTTP client or a numeric
library, so the Lambda handlers that use it start fast and the logic is testable with fakes.
"""
