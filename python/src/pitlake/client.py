"""The connection to a pitlake server and everything asked of it."""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from typing import Any, Callable, Dict, Iterator, Optional, Sequence, Union

import adbc_driver_flightsql
import adbc_driver_flightsql.dbapi as flightsql
import adbc_driver_manager
import pyarrow as pa
import pyarrow.fs as pafs

from . import _manifest, _sql
from ._hash import ContentHash
from ._labels import LabelData
from ._results import Progress, Result, TrainingSet, run_with_cleanup, with_cleanup
from .errors import (
    InvalidArgument,
    NotFound,
    PitlakeError,
    ReproductionMismatch,
    translate,
)

__all__ = ["Client", "connect"]

Manifest = Dict[str, Any]


def _pem(certs: Union[str, bytes, "os.PathLike[str]"]) -> str:
    """PEM text from PEM text or bytes, or from the path of a PEM file."""
    if isinstance(certs, bytes):
        return certs.decode()
    if isinstance(certs, str) and "-----BEGIN" in certs:
        return certs
    with open(os.fspath(certs), encoding="utf-8") as f:
        return f.read()


def connect(
    uri: Optional[str] = None,
    *,
    username: Optional[str] = None,
    password: Optional[str] = None,
    token: Optional[str] = None,
    tls_root_certs: Union[str, bytes, "os.PathLike[str]", None] = None,
    timeout: Optional[float] = None,
) -> "Client":
    """Connects to ``pitlake serve`` and logs in.

    Args:
        uri: ``grpc://host:port`` (plaintext, for a server on loopback) or
            ``grpc+tls://host:port``. Default: ``$PITLAKE_URI``.
        username, password: a password login (the Flight handshake). Default:
            ``$PITLAKE_USERNAME``, ``$PITLAKE_PASSWORD``.
        token: a static bearer token instead of a password. Default: ``$PITLAKE_TOKEN``.
        tls_root_certs: the CA certificate(s) that signed the server's certificate, as PEM text
            or bytes or a path to a PEM file, for a private CA. Default:
            ``$PITLAKE_TLS_ROOT_CERTS`` (a path), else the system's trust store.
        timeout: seconds a call may take on the client's side before it is abandoned
            (``DeadlineExceeded``); the server has its own ``--query-timeout``.

    Raises:
        Unauthenticated: the password or token was refused.
        Unavailable: the server could not be reached.
        InvalidArgument: no URI, or both a password and a token.
    """
    env = os.environ
    uri = uri if uri is not None else env.get("PITLAKE_URI")
    if not uri:
        raise InvalidArgument("no server to connect to: pass a URI or set PITLAKE_URI")
    explicit = username is not None or password is not None or token is not None
    if not explicit:
        username = env.get("PITLAKE_USERNAME")
        password = env.get("PITLAKE_PASSWORD")
        token = env.get("PITLAKE_TOKEN")
        if token and (username or password):
            raise InvalidArgument(
                "both PITLAKE_TOKEN and PITLAKE_USERNAME/PITLAKE_PASSWORD are set; unset one"
            )
    if token is not None and (username is not None or password is not None):
        raise InvalidArgument("log in with a password or with a token, not both")
    if (username is None) != (password is None):
        raise InvalidArgument("a password login needs both a user name and a password")
    if tls_root_certs is None and env.get("PITLAKE_TLS_ROOT_CERTS"):
        tls_root_certs = env["PITLAKE_TLS_ROOT_CERTS"]

    options: Dict[str, str] = {}
    if username is not None and password is not None:
        options["username"] = username
        options["password"] = password
    if token is not None:
        options[adbc_driver_flightsql.DatabaseOptions.AUTHORIZATION_HEADER.value] = (
            "Bearer " + token
        )
    if tls_root_certs is not None:
        options[adbc_driver_flightsql.DatabaseOptions.TLS_ROOT_CERTS.value] = _pem(
            tls_root_certs
        )
    if timeout is not None:
        for option in (
            adbc_driver_flightsql.DatabaseOptions.TIMEOUT_QUERY,
            adbc_driver_flightsql.DatabaseOptions.TIMEOUT_FETCH,
            adbc_driver_flightsql.DatabaseOptions.TIMEOUT_UPDATE,
        ):
            options[option.value] = str(float(timeout))
    try:
        with warnings.catch_warnings():
            # The driver cannot turn autocommit off (pitlake has no transactions) and says so.
            warnings.simplefilter("ignore")
            conn = flightsql.connect(uri, db_kwargs=options)
    except adbc_driver_manager.Error as e:
        typed = translate(e)
        if typed is None:
            raise
        raise typed from e
    client = Client(conn, uri)
    # The handshake runs lazily in the driver; a first call makes a refused login fail here.
    client._fetch("SELECT 1")
    return client


# Rows per uploaded record batch (a label row is tens of bytes: a few MiB a message).
_UPLOAD_BATCH_ROWS = 65_536

class Client:
    """A session with a pitlake server (one Flight SQL connection, one bearer token).

    Made by :func:`pitlake.connect`; close it (or use it in a ``with`` block) when done. Calls
    on one client run one after another; use one client per thread.
    """

    def __init__(self, connection: Any, uri: str) -> None:
        self._conn = connection
        self.uri = uri

    # ---- the session

    def close(self) -> None:
        """Closes the connection (the server then forgets the session's temporary tables)."""
        with self._errors():
            self._conn.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"pitlake.Client({self.uri!r})"

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """Raises ADBC's and the result streams' errors as typed pitlake errors."""
        try:
            yield
        except (adbc_driver_manager.Error, pa.ArrowException, OSError) as e:
            typed = translate(e)
            if typed is None:
                raise
            raise typed from e

    def _cursor(self) -> Any:
        with self._errors():
            return self._conn.cursor()

    def _fetch(self, sql: str, parameters: Optional[Sequence[Any]] = None) -> pa.Table:
        """Runs one statement and reads its result whole."""
        cursor = self._cursor()
        try:
            with self._errors():
                cursor.execute(sql, parameters)
                return cursor.fetch_arrow_table()
        finally:
            with contextlib.suppress(Exception):
                cursor.close()

    def _upload(self, name: str, data: LabelData) -> None:
        """Bulk-ingests labels into a new temporary table of this session, in record batches
        of at most ``_UPLOAD_BATCH_ROWS`` rows: one Flight message per batch stays under the
        16 MiB a gRPC message may hold, whatever the size of the frame."""
        if isinstance(data, pa.Table):
            data = pa.RecordBatchReader.from_batches(
                data.schema, data.to_batches(max_chunksize=_UPLOAD_BATCH_ROWS)
            )
        cursor = self._cursor()
        try:
            with self._errors():
                cursor.adbc_ingest(name, data, mode="create", temporary=True)
        finally:
            with contextlib.suppress(Exception):
                cursor.close()

    def _drop_temporary(self, name: str) -> None:
        """Drops an uploaded table; one already gone (the session ended, a retry) is fine."""
        try:
            self._fetch(_sql.drop_table(name))
        except NotFound:
            pass

    # ---- queries and statements

    def sql(self, query: str, parameters: Optional[Sequence[Any]] = None) -> Result:
        """A SQL query (or any statement that returns rows), run when its rows are asked for:
        ``fs.sql("SELECT …").to_pandas()``. ``parameters`` bind ``?`` (or ``$1``…)."""
        if not isinstance(query, str):
            raise InvalidArgument(f"a query is a string, not {type(query).__name__}")
        return Result(self, query, parameters)

    def execute(self, statement: str, parameters: Optional[Sequence[Any]] = None) -> pa.Table:
        """Runs a statement now — DSL (``CREATE ENTITY …``, ``REGISTER MODEL …``) or SQL
        (``CREATE TABLE … AS``) — and returns its result: the server's one-line report for a
        change, the rows for a query."""
        if not isinstance(statement, str):
            raise InvalidArgument(f"a statement is a string, not {type(statement).__name__}")
        return self._fetch(statement, parameters)

    # ---- training sets, exports, reproduction

    def training_set(
        self,
        labels: Any,
        at: str,
        features: Union[str, Sequence[str]],
        *,
        with_event_times: bool = False,
        with_versions: bool = False,
        knowledge_time: bool = True,
    ) -> TrainingSet:
        """A training set: per label row and feature view, the latest feature values known at
        the label's time (docs/dsl.md, "Training sets").

        Args:
            labels: a table name (``"orders"``, ``"labels.orders"``), a query (a string
                starting with ``SELECT`` or ``WITH``), or data: a pandas or polars DataFrame, a
                pyarrow Table, RecordBatch or RecordBatchReader (uploaded for each run).
            at: the label-time column.
            features: items ``"view.*"``, ``"view.feature"``, ``"SERVICE name"``.
            with_event_times: add ``<view>__event_time``, each matched row's event time.
            with_versions: add ``<view>__table_version``, the Delta version read.
            knowledge_time: False drops the rule that a value is used only if delivered by
                the label time (``WITHOUT KNOWLEDGE TIME``; it can leak).

        Names are exact: each is sent quoted, so case matters and no name can change the
        statement. Nothing runs until the rows are asked for (``to_arrow()`` …) or the
        training set is exported.
        """
        return TrainingSet(
            self,
            labels,
            at,
            features,
            with_event_times=with_event_times,
            with_versions=with_versions,
            knowledge_time=knowledge_time,
        )

    def export(
        self,
        training_set: TrainingSet,
        to: str,
        *,
        format: Optional[str] = None,
        filesystem: Optional[pafs.FileSystem] = None,
        progress: Optional[Progress] = None,
    ) -> Manifest:
        """Exports a training set on the server (``EXPORT TRAINING SET … TO '…'``) and returns
        its manifest, read back from ``<to>.manifest.json``.

        Args:
            to: an absolute path or a URL (``s3://…``) the server writes to and this client
                can read the manifest from (with ``filesystem``, if given).
            format: ``parquet``, ``csv`` or ``delta`` (default: from the extension).
            progress: called with the rows written so far (and 0 bytes) about once a second
                while the server writes (``EXPORT … WITH PROGRESS``), then once with the
                export's rows and, for a file, its bytes.

        Needs the ``files`` grant (it writes files of the server).
        """
        if not isinstance(training_set, TrainingSet):
            raise InvalidArgument(
                f"export takes a training set (Client.training_set), not "
                f"{type(training_set).__name__}"
            )
        _manifest.check_location(to)
        text, done = training_set._with_labels(
            lambda relation: _sql.export(training_set._statement(relation), to, format)
        )
        if progress is None:
            report_table = run_with_cleanup(self, text, done)
            report = " ".join(str(v) for v in report_table.column(0).to_pylist())
        else:
            report = self._export_with_progress(text + " WITH PROGRESS", done, progress)
        location = _manifest.report_manifest(report) or _manifest.manifest_location(to)
        manifest = _manifest.read_manifest(location, filesystem)
        reported = _manifest.report_hash(report)
        if reported is not None and reported != manifest["output"]["content_hash"]:
            raise PitlakeError(
                f"the manifest at {location} is not this export's (it records "
                f"{manifest['output']['content_hash']}, the export reported {reported}): "
                "another export wrote to the same place"
            )
        if progress is not None:
            output = manifest["output"]
            progress(int(output.get("rows", 0)), int(output.get("bytes") or 0))
        return manifest

    def _export_with_progress(
        self, text: str, done: Callable[[], None], progress: Progress
    ) -> str:
        """Runs ``EXPORT … WITH PROGRESS``, calling ``progress`` for each report row while the
        export runs, then the cleanup ``done``; returns the export's one-line report."""

        def run() -> str:
            report: Optional[str] = None
            with self._errors():
                for batch in Result(self, text).to_batches():
                    for row in batch.to_pylist():
                        if row["done"]:
                            report = row["result"]
                        else:
                            progress(int(row["rows_written"]), 0)
            if report is None:
                raise PitlakeError("the export ended without reporting its result")
            return report

        return with_cleanup(run, done)

    def reproduce(
        self,
        manifest: Union[Manifest, str, "os.PathLike[str]"],
        *,
        check_output: bool = True,
        filesystem: Optional[pafs.FileSystem] = None,
        progress: Optional[Progress] = None,
    ) -> bool:
        """Rebuilds an exported training set from its manifest and checks it is identical.

        Runs the manifest's pinned query (every table at the version the export read) through
        the server, hashes the rows here as the server does, and compares the hash with
        ``output.content_hash``; then, with ``check_output``, reads the exported Parquet or
        CSV file and compares its size and SHA-256 with the manifest's.

        Returns True when everything checked agrees; raises
        :class:`~pitlake.errors.ReproductionMismatch` naming each difference otherwise. What
        cannot be checked from here (a Delta output, a file of an older manifest) is said in a
        warning. ``progress`` is called as the rebuilt rows stream in.
        """
        loaded = _manifest.load(manifest, filesystem)
        digest = ContentHash()
        reader = self.sql(loaded["query"]).to_batches(progress)
        with self._errors():
            for batch in reader:
                digest.update(batch)
        differences = []
        expected = loaded["output"]["content_hash"]
        actual = digest.hexdigest()
        if actual != expected:
            differences.append(
                f"content hash: the manifest records {expected}, the pinned query now gives "
                f"{actual}"
            )
        if check_output:
            found, unchecked = _manifest.output_differences(loaded, filesystem)
            differences.extend(found)
            for note in unchecked:
                warnings.warn(note, stacklevel=2)
        if differences:
            raise ReproductionMismatch(
                "the training set does not reproduce: " + "; ".join(differences), differences
            )
        return True

    # ---- the registry

    def _listing(self, kind: str, registry_version: Optional[int]) -> pa.Table:
        return self._fetch(_sql.show(_sql.kind(kind), registry_version))

    def entities(self, registry_version: Optional[int] = None) -> pa.Table:
        """The entities (``SHOW ENTITIES``), now or as of a registry version."""
        return self._listing("entity", registry_version)

    def views(self, registry_version: Optional[int] = None) -> pa.Table:
        """The feature views this user may see (``SHOW FEATURE VIEWS``)."""
        return self._listing("feature view", registry_version)

    def services(self, registry_version: Optional[int] = None) -> pa.Table:
        """The feature services (``SHOW FEATURE SERVICES``)."""
        return self._listing("feature service", registry_version)

    def models(self, registry_version: Optional[int] = None) -> pa.Table:
        """The registered models (``SHOW MODELS``)."""
        return self._listing("model", registry_version)

    def describe(
        self,
        name: str,
        kind: str = "feature view",
        *,
        version: Optional[str] = None,
        registry_version: Optional[int] = None,
    ) -> Dict[str, Any]:
        """A registry object (``DESCRIBE <kind> name``) as a dict of its properties, its
        ``definition`` parsed from JSON; ``version`` names a model's version,
        ``registry_version`` reads the registry as it was then."""
        kind_words = _sql.kind(kind)
        table = self._fetch(_sql.describe(kind_words, name, version, registry_version))
        described: Dict[str, Any] = {}
        for row in table.to_pylist():
            key, value = row["property"], row["value"]
            if key == "definition" and isinstance(value, str):
                with contextlib.suppress(ValueError):
                    value = json.loads(value)
            described[key] = value
        return described

    def history(
        self, name: str, kind: str = "feature view", *, version: Optional[str] = None
    ) -> pa.Table:
        """Every change of a registry object (``SHOW HISTORY OF``): registry version, action,
        when, who, the statement and the definition."""
        return self._fetch(_sql.history(_sql.kind(kind), name, version))

    def diff(
        self,
        name: str,
        start: int,
        end: int,
        kind: str = "feature view",
        *,
        version: Optional[str] = None,
    ) -> pa.Table:
        """The fields of a registry object that differ between two registry versions
        (``SHOW DIFF OF … BETWEEN REGISTRY VERSION start AND REGISTRY VERSION end``)."""
        return self._fetch(_sql.diff(_sql.kind(kind), name, version, start, end))
