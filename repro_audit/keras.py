"""`from repro_audit.keras import AuditCallback`: record `model.fit` as a trace (docs/keras-fit.md).

Importing this module imports TensorFlow and Keras, as `repro_audit.audit.keras` does.
"""

from __future__ import annotations

from repro_audit.audit.keras import AuditCallback

__all__ = ["AuditCallback"]
