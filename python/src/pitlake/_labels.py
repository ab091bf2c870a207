"""Labels for a training set: a table of the warehouse, a query, or data of the caller's.

Data (a pandas or polars DataFrame, a pyarrow Table, RecordBatch or RecordBatchReader) is
uploaded with Flight SQL bulk ingest for the run of one statement, as a temporary table of
the caller's session named ``pitlake_labels_<32 hex digits>``, which the statement names; the
table is dropped when the statement's rows have been read (or its reader closed). The server
keeps such a table visible to the same session (the same bearer token) only, by its bare name,
until it is dropped or the session ends.
"""

from __future__ import annotations

import sys
import uuid
from typing import Any, Optional, Union

import pyarrow as pa

from . import _sql
from .errors import InvalidArgument

LabelData = Union[pa.Table, pa.RecordBatchReader]

#: The prefix of the temporary tables that hold uploaded labels.
TEMPORARY_PREFIX = "pitlake_labels_"


def _module_class(module: str, name: str) -> Optional[Any]:
    """A class of a module the caller has imported (pandas, polars), without importing it."""
    loaded = sys.modules.get(module)
    found = getattr(loaded, name, None) if loaded is not None else None
    return found if isinstance(found, type) else None


def as_arrow(data: Any) -> Optional[LabelData]:
    """Arrow data for labels given as data, or None if ``data`` is not data."""
    if isinstance(data, (pa.Table, pa.RecordBatchReader)):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    pandas_frame = _module_class("pandas", "DataFrame")
    if pandas_frame is not None and isinstance(data, pandas_frame):
        return pa.Table.from_pandas(data, preserve_index=False)
    polars_frame = _module_class("polars", "DataFrame")
    if polars_frame is not None and isinstance(data, polars_frame):
        table = data.to_arrow()
        return table if isinstance(table, pa.Table) else pa.table(table)
    polars_lazy = _module_class("polars", "LazyFrame")
    if polars_lazy is not None and isinstance(data, polars_lazy):
        return as_arrow(data.collect())
    return None


class Labels:
    """Labels as the statement names them: a relation, or data uploaded under a new name."""

    def __init__(self, labels: Any) -> None:
        self.relation: Optional[str] = None
        self.data: Optional[LabelData] = None
        self._read = False
        if isinstance(labels, str):
            self.relation = _sql.labels_relation(labels)
            return
        data = as_arrow(labels)
        if data is None:
            raise InvalidArgument(
                "labels are a table name, a query (SELECT … / WITH …), or data: a pandas or "
                "polars DataFrame, a pyarrow Table, RecordBatch or RecordBatchReader; "
                f"not {type(labels).__name__}"
            )
        if isinstance(data, pa.Table) and data.num_columns == 0:
            raise InvalidArgument("the labels have no columns")
        self.data = data

    @property
    def uploaded(self) -> bool:
        """Whether the labels are data that each run uploads."""
        return self.data is not None

    def new_name(self) -> str:
        """A fresh name for the temporary table of one run."""
        return TEMPORARY_PREFIX + uuid.uuid4().hex

    def take(self) -> LabelData:
        """The data to upload for one run; a RecordBatchReader can be read only once."""
        if self.data is None:
            raise InvalidArgument("these labels are not data")
        if isinstance(self.data, pa.RecordBatchReader):
            if self._read:
                raise InvalidArgument(
                    "labels from a RecordBatchReader can be uploaded once, and this training "
                    "set has already run; pass a Table or DataFrame to run it again"
                )
            self._read = True
        return self.data

    def describe(self) -> str:
        if self.relation is not None:
            return self.relation
        data = self.data
        if isinstance(data, pa.Table):
            return f"<uploaded: {data.num_rows} rows, columns {', '.join(data.column_names)}>"
        assert data is not None
        return f"<uploaded: a stream, columns {', '.join(data.schema.names)}>"
