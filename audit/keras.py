"""`from repro_audit.keras import AuditCallback`: record `model.fit` as a trace (docs/keras-fit.md).

Importing this module imports TensorFlow and Keras; nothing else in `audit` does.
"""

from __future__ import annotations

from repro_audit.probes.tf import require_keras, require_tensorflow

require_tensorflow()
require_keras()

from repro_audit.probes.tf.fit_callback import AuditCallback

__all__ = ["AuditCallback"]
