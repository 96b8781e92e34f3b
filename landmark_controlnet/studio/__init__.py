"""The application layer of Landmark ControlNet Studio (the web app): what each of its views and
named API endpoints calls. It holds the logic, framework-free, on the same code paths the CLI runs;
the web app only lays it out. User-typed paths are confined to a `DataRoot`."""

from .api import ConditionResult, DatasetRow, condition, confined_generate_request, dataset_rows, generate
from .paths import DataRoot, OutsideDataRootError

__all__ = [
    "ConditionResult",
    "DataRoot",
    "DatasetRow",
    "OutsideDataRootError",
    "condition",
    "confined_generate_request",
    "dataset_rows",
    "generate",
]
