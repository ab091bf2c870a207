"""Results: a statement that runs when its rows are asked for, and streams them."""

from __future__ import annotations

import contextlib
import sys
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, Sequence, TypeVar

import pyarrow as pa

from . import _sql
from ._labels import Labels
from .errors import PitlakeError

if TYPE_CHECKING:  # pragma: no cover
    import pandas
    import polars

    from .client import Client

#: Called after each batch with the rows and the bytes (Arrow, in memory) received so far.
T = TypeVar("T")

Progress = Callable[[int, int], None]


class Result:
    """A statement whose rows are fetched when asked for, each time anew.

    ``to_batches()`` streams them (a ``pyarrow.RecordBatchReader``: batches arrive as they are
    read, so a result larger than memory can be written out batch by batch); ``to_arrow()``,
    ``to_pandas()`` and ``to_polars()`` read them whole. Each takes an optional ``progress``
    callback, called after each batch with the rows and bytes received so far.
    """

    def __init__(self, client: "Client", sql: str, parameters: Optional[Sequence[Any]] = None):
        self._client = client
        self._sql = sql
        self._parameters = parameters

    @property
    def sql(self) -> str:
        """The statement sent to the server."""
        return self._sql

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.sql!r})"

    def _run(self) -> "tuple[str, Optional[Sequence[Any]], Callable[[], None]]":
        """The statement and parameters of one run, and what to do when its rows are read."""
        return self._sql, self._parameters, lambda: None

    def to_batches(self, progress: Optional[Progress] = None) -> pa.RecordBatchReader:
        """The rows as a stream of record batches."""
        sql, parameters, done = self._run()
        try:
            cursor = self._client._cursor()
        except BaseException:
            done()
            raise
        try:
            with self._client._errors():
                cursor.execute(sql, parameters)
                reader = cursor.fetch_record_batch()
        except BaseException:
            _close_quietly(cursor)
            done()
            raise
        return pa.RecordBatchReader.from_batches(
            reader.schema, _stream(self._client, reader, cursor, done, progress)
        )

    def to_arrow(self, progress: Optional[Progress] = None) -> pa.Table:
        """The rows as a pyarrow Table."""
        reader = self.to_batches(progress)
        with self._client._errors():
            return reader.read_all()

    def to_pandas(self, progress: Optional[Progress] = None, **kwargs: Any) -> "pandas.DataFrame":
        """The rows as a pandas DataFrame (``kwargs`` go to ``pyarrow.Table.to_pandas``).

        Needs pandas (``pip install 'pitlake[pandas]'``).
        """
        return self.to_arrow(progress).to_pandas(**kwargs)

    def to_polars(self, progress: Optional[Progress] = None) -> "polars.DataFrame":
        """The rows as a polars DataFrame. Needs polars (``pip install 'pitlake[polars]'``)."""
        import polars

        frame = polars.from_arrow(self.to_arrow(progress))
        assert isinstance(frame, polars.DataFrame)
        return frame


def _close_quietly(cursor: Any) -> None:
    with contextlib.suppress(Exception):
        cursor.close()


def _stream(
    client: "Client",
    reader: pa.RecordBatchReader,
    cursor: Any,
    done: Callable[[], None],
    progress: Optional[Progress],
) -> Iterator[pa.RecordBatch]:
    """The reader's batches, with progress, typed errors, and the cleanup after the last."""
    rows = 0
    nbytes = 0
    completed = False
    try:
        while True:
            with client._errors():
                try:
                    batch = reader.read_next_batch()
                except StopIteration:
                    break
            rows += batch.num_rows
            nbytes += batch.nbytes
            if progress is not None:
                progress(rows, nbytes)
            yield batch
        completed = True
    finally:
        with contextlib.suppress(Exception):
            reader.close()
        _close_quietly(cursor)
        in_flight = sys.exc_info()[1]
        if completed or in_flight is None or isinstance(in_flight, GeneratorExit):
            done()
        else:
            # Already failing: the cleanup's own failure must not hide why.
            try:
                done()
            except PitlakeError as cleanup:
                _note(in_flight, f"and then the cleanup failed: {cleanup}")


class TrainingSet(Result):
    """A training set (``TRAINING SET LABELS … AT … FEATURES (…)``), built on the server each
    time its rows are asked for, and the input of :meth:`pitlake.Client.export`.

    With labels given as data, each run uploads them to a temporary table first and drops it
    once the rows have been read (or the reader of ``to_batches()`` is closed).
    """

    def __init__(
        self,
        client: "Client",
        labels: Any,
        at: str,
        features: Sequence[str],
        *,
        with_event_times: bool = False,
        with_versions: bool = False,
        knowledge_time: bool = True,
    ) -> None:
        self._labels = Labels(labels)
        self._options = dict(
            with_event_times=with_event_times,
            with_versions=with_versions,
            knowledge_time=knowledge_time,
        )
        self._at = at
        self._features = [features] if isinstance(features, str) else list(features)
        # Checked now, so that a bad name fails here and not at the first run.
        text = self._statement(self._labels.relation or _sql.ident("pitlake_labels_check"))
        super().__init__(client, text)
        #: The statement as last sent (with the temporary table's name, for uploaded labels).
        self.last_statement: Optional[str] = None

    def _statement(self, relation: str) -> str:
        return _sql.training_set(relation, self._at, self._features, **self._options)

    @property
    def sql(self) -> str:
        """The statement; uploaded labels appear as ``<uploaded: …>`` (the temporary table
        gets a new name on each run)."""
        if self._labels.relation is not None:
            return self._sql
        return self._statement(self._labels.describe())

    @property
    def labels_uploaded(self) -> bool:
        """Whether the labels are data uploaded for each run."""
        return self._labels.uploaded

    def _with_labels(self, build: Callable[[str], str]) -> "tuple[str, Callable[[], None]]":
        """The statement ``build`` makes from the labels' relation, and its cleanup: for data,
        after uploading it to a new temporary table, which the cleanup drops."""
        if self._labels.relation is not None:
            text = build(self._labels.relation)
            self.last_statement = text
            return text, lambda: None
        name = self._labels.new_name()
        self._client._upload(name, self._labels.take())
        text = build(_sql.ident(name))
        self.last_statement = text
        return text, lambda: self._client._drop_temporary(name)

    def _run(self) -> "tuple[str, Optional[Sequence[Any]], Callable[[], None]]":
        text, done = self._with_labels(self._statement)
        return text, None, done


def run_with_cleanup(client: "Client", text: str, done: Callable[[], None]) -> pa.Table:
    """Runs a statement that returns a small result (an export's report), then the cleanup;
    a cleanup that fails after the statement failed is noted on the statement's error."""
    return with_cleanup(lambda: client._fetch(text), done)


def with_cleanup(action: Callable[[], T], done: Callable[[], None]) -> T:
    """Runs ``action``, then the cleanup ``done``; a cleanup that fails after the action failed
    is noted on the action's error."""
    failed: Optional[BaseException] = None
    try:
        return action()
    except BaseException as e:
        failed = e
        raise
    finally:
        if failed is None:
            done()
        else:
            try:
                done()
            except PitlakeError as cleanup:
                _note(failed, f"and then the cleanup failed: {cleanup}")


def _note(error: BaseException, text: str) -> None:
    add_note = getattr(error, "add_note", None)
    if add_note is not None:
        add_note(text)


__all__ = ["Progress", "Result", "TrainingSet"]
