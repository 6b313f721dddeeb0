"""The import path of models registered before ``pipelines/`` was grouped by stage.

Their MLflow pyfunc entry script (models-from-code) says ``from pipelines.registry import
AimVideoPyfunc``; it must keep loading. New registrations name :mod:`pipelines.tracking.registry`.
"""

from pipelines.tracking.registry import AimVideoPyfunc

__all__ = ["AimVideoPyfunc"]
