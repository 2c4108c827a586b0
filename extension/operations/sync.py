"""``sync_run``: one run of a sync profile — optionally ``promote``, then the ``content`` move of what changed.

Both steps are dispatched through the registry by name (``operations.run("promote", …)``,
``operations.run("content", …)``), never by importing their internals.

A run, under the profile's run lock (:meth:`~.sync_profiles.SyncStore.run_lock`):

1. reads the source's newest ``directus_activity.id`` (the high mark of this run);
2. per collection, the activity rows after the collection's watermark up to that mark
   (``action`` create/update/delete, ``collection``, ``item``), and those of the ids recent runs found
   missing (:func:`activity_gaps`): the changed keys, plus the keys of the rows whose related rows
   (o2m children, referenced files) changed (:func:`related_changes`).  A collection without a
   watermark, or a ``full`` run, re-scans every row its filter selects;
3. the conflict policy: ``source-wins`` moves with the profile's mode; ``target-wins``
   moves with ``skip-existing`` (rows the target has are kept; no deletes);
   ``skip-if-target-modified`` leaves out the keys the target changed since the last run
   (the target's own activity after its watermark, and rows whose ``date_updated`` is
   later than the last run's start), integer keys translated through the content move's ID map;
4. per collection, ``content`` moves filtered to those keys (``{"<pk>": {"_in": [...]}}``, at most
   :data:`CHUNK` keys each, AND the profile's filter; deleted keys only in ``mirror`` mode; an
   integer-keyed collection never runs a key-filtered mirror);
5. advances each collection's watermark only when its step succeeded, records the
   run in the history (with the due slot it ran for) in the lock's transaction,
   and on failure POSTs the report to the profile's ``alert_webhook``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa

from ..errors import InvalidInput, MigrateError, first_line
from .sync_profiles import SyncStore, now_iso

ACTIONS = ("create", "update", "delete")
#: The most keys one content step takes in its filter; more changed keys make a re-scan of the collection.
MAX_KEYS = 5000
#: Bound parameters per statement (SQLite's oldest limit is 999): ``IN``/``NOT IN`` lists are cut to this size.
CHUNK = 500
#: Rows fetched at a time from the activity and the target's table (never all at once).
STREAM_ROWS = 1000
#: The most missing activity ids a run keeps for the next runs to read again (see :func:`activity_gaps`).
MAX_GAPS = 2000


def lookback_seconds() -> float:
    """``CAIRN_MIGRATE_SYNC_LOOKBACK_SECONDS`` (default 300): how long an activity id missing when a run read
    past it is looked for again by the following runs (see :func:`activity_gaps`)."""
    raw = os.environ.get("CAIRN_MIGRATE_SYNC_LOOKBACK_SECONDS", "").strip()
    try:
        return max(0.0, float(raw)) if raw else 300.0
    except ValueError:
        raise InvalidInput(f"CAIRN_MIGRATE_SYNC_LOOKBACK_SECONDS={raw!r} is not a number of seconds",
                           hint="set it to a number like 60") from None


def read_changes(engine: sa.Engine, collections: list[str], marks: Mapping[str, int], upto: int,
                 gaps: list[int] | None = None) -> dict[str, Any]:
    """Per collection, the keys the activity rows after its watermark (up to ``upto``) name, and the rows
    of ``gaps``.

    The watermark (the previous run's ``MAX(id)``) alone would skip an id taken by a transaction that
    committed only after that run read past it: ``gaps`` are such ids, missing when a recent run read
    (:func:`activity_gaps`), read again here in case their transaction has committed since.

    :returns: ``{collection: {"upsert": [...], "delete": [...], "rows": n}}``, the last action of a key
        deciding its side; collections without a watermark are left out (they are re-scanned).
    """
    activity = sa.table("directus_activity", sa.column("id"), sa.column("action"), sa.column("collection"),
                        sa.column("item"))
    changes: dict[str, Any] = {}
    with engine.connect() as conn:
        for collection in collections:
            if collection not in marks:
                continue
            mark = marks[collection]
            last: dict[str, str] = {}
            count = 0
            for chunk in _chunks(sorted(g for g in gaps or () if g <= mark)):  # older than the rows after the mark
                for action, item in conn.execute(sa.select(activity.c.action, activity.c.item).where(
                        activity.c.collection == collection, activity.c.id.in_(chunk),
                        activity.c.action.in_(ACTIONS)).order_by(activity.c.id)):
                    last[str(item)] = action
                    count += 1
            after = activity.c.id > mark
            rows = conn.execution_options(stream_results=True, yield_per=STREAM_ROWS).execute(
                sa.select(activity.c.action, activity.c.item).where(
                    activity.c.collection == collection, after, activity.c.id <= upto,
                    activity.c.action.in_(ACTIONS)).order_by(activity.c.id))
            for action, item in rows:
                last[str(item)] = action
                count += 1
            changes[collection] = {"upsert": sorted(k for k, a in last.items() if a != "delete"),
                                   "delete": sorted(k for k, a in last.items() if a == "delete"), "rows": count}
    return changes


def activity_gaps(engine: sa.Engine, low: int, upto: int, carried: list[list[Any]], now: str) -> list[list[Any]]:
    """The activity ids in ``(low, upto]`` that no row has now (an uncommitted transaction's, or a rolled-back
    one's), each with when it was first seen missing, plus the ``carried`` ones (``[id, first seen]``)
    still missing and first seen at most :func:`lookback_seconds` ago.

    This bounds the race of a watermark: a transaction that commits at most the lookback after a run read
    past its id is read by a later run; one that takes longer is missed (until a ``full`` run).  At most
    :data:`MAX_GAPS` are kept (the newest).
    """
    horizon = datetime.fromisoformat(now) - timedelta(seconds=lookback_seconds())
    wanted = {int(i): t for i, t in carried if datetime.fromisoformat(t) >= horizon}
    present: set[int] = set()
    with engine.connect() as conn:
        expected = low + 1
        if low < upto:
            ids = sa.text("SELECT id FROM directus_activity WHERE id > :low AND id <= :upto ORDER BY id")
            for (found,) in conn.execution_options(stream_results=True, yield_per=STREAM_ROWS).execute(
                    ids, {"low": low, "upto": upto}):
                for missing in range(expected, int(found)):
                    wanted.setdefault(missing, now)
                expected = int(found) + 1
        old_ids = sa.text("SELECT id FROM directus_activity WHERE id IN :ids").bindparams(
            sa.bindparam("ids", expanding=True))
        for chunk in _chunks(sorted(i for i in wanted if i <= low)):
            present |= {int(i) for (i,) in conn.execute(old_ids, {"ids": chunk})}
    return [[i, wanted[i]] for i in sorted(wanted) if i not in present][-MAX_GAPS:]


FILES = "directus_files"


def _links(conn: sa.Connection, root: str) -> tuple[list[tuple[str, str]], list[tuple[str, str, str | None]]]:
    """The source's relations (``directus_relations``) that tie rows of other collections to ``root``'s rows:
    ``children`` ``(collection, field)`` whose ``field`` holds a root key (o2m children: translations,
    junction rows, comments), and ``files`` ``(collection, file field, root field)``: files referenced by a
    root (``collection`` = root, root field None) or by one of its children."""
    relations = sa.table("directus_relations", sa.column("many_collection"), sa.column("many_field"),
                         sa.column("one_collection"))
    rows = conn.execute(sa.select(relations.c.many_collection, relations.c.many_field,
                                  relations.c.one_collection)).all()
    children = sorted({(m, f) for m, f, one in rows if one == root and m and f and m != root
                       and not m.startswith("directus_")})
    by_child = dict(children)
    files = sorted({(m, f, None if m == root else by_child[m]) for m, f, one in rows
                    if one == FILES and m and f and (m == root or m in by_child)}, key=str)
    return children, files


def related_changes(engine: sa.Engine, root: str, mark: int, upto: int, gaps: list[int] | None = None) -> dict[str, Any]:
    """Root keys of ``root`` whose related rows the activity after ``mark`` (the same window as
    :func:`read_changes`) names: an edited child (translation, junction row, comment) gives the root its
    foreign key points at, an edited file the roots (or the roots of the children) referencing it.

    A deleted child is gone from the source, so its root is not found here (a delete through the root's own
    API writes the root's activity too).  :returns: ``{"keys": [...], "rows": {collection: n}}``.
    """
    activity = sa.table("directus_activity", sa.column("id"), sa.column("action"), sa.column("collection"),
                        sa.column("item"), sa.column("timestamp"))
    keys: set[str] = set()
    counts: dict[str, int] = {}
    with engine.connect() as conn:
        children, files = _links(conn, root)
        watched = sorted({c for c, _ in children} | ({FILES} if files else set()))
        if not watched:
            return {"keys": [], "rows": {}}
        after = activity.c.id > mark
        older = sorted(g for g in gaps or () if g <= mark)
        if older:
            after = sa.or_(after, activity.c.id.in_(older[-CHUNK:]))  # at most CHUNK bound ids
        items: dict[str, set[str]] = {}
        for collection, item in conn.execution_options(stream_results=True, yield_per=STREAM_ROWS).execute(
                sa.select(activity.c.collection, activity.c.item).where(
                    activity.c.collection.in_(watched), after, activity.c.id <= upto,
                    activity.c.action.in_(("create", "update")))):
            items.setdefault(collection, set()).add(str(item))
        for collection, found in items.items():
            counts[collection] = len(found)
        for child, field in children:
            if child not in items:
                continue
            pk, integer = _key_column(engine, child)
            table = sa.table(child, sa.column(pk), sa.column(field))
            for chunk in _chunks(_keys(sorted(items[child]), integer)):
                keys |= {str(v) for (v,) in conn.execute(sa.select(table.c[field]).where(
                    table.c[pk].in_(chunk), table.c[field].is_not(None)))}
        for collection, field, root_field in files:
            if FILES not in items:
                continue
            table = sa.table(collection, sa.column(field), sa.column(root_field or _key_column(engine, root)[0]))
            pointer = table.c[root_field] if root_field else table.c[_key_column(engine, root)[0]]
            for chunk in _chunks(sorted(items[FILES])):
                keys |= {str(v) for (v,) in conn.execute(sa.select(pointer).where(
                    table.c[field].in_(chunk), pointer.is_not(None)))}
    return {"keys": sorted(keys), "rows": counts}


def high_mark(engine: sa.Engine) -> int:
    """The newest ``directus_activity.id`` (0 when there is none)."""
    with engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT MAX(id) FROM directus_activity")).scalar() or 0)


def _key_column(engine: sa.Engine, collection: str) -> tuple[str, bool]:
    """The collection's primary key column and whether it is an integer."""
    inspector = sa.inspect(engine)
    try:
        pk = inspector.get_pk_constraint(collection)["constrained_columns"]
    except sa.exc.NoSuchTableError:
        raise InvalidInput(f"{collection} is not a table of the source", hint="fix the profile's collections") from None
    if len(pk) != 1:
        raise InvalidInput(f"{collection} has no single primary key column; it cannot be synced incrementally",
                           hint="sync a collection with one key column")
    column = next(c for c in inspector.get_columns(collection) if c["name"] == pk[0])
    return pk[0], isinstance(column["type"], sa.Integer)


def _keys(values: list[str], integer: bool) -> list[Any]:
    return [int(v) for v in values if v.lstrip("-").isdigit()] if integer else list(values)


def target_modified(engine: sa.Engine, collection: str, mark: int | None, upto: int, since: str | None) -> set[str]:
    """Keys of ``collection`` the target changed itself since the last run: its activity rows after ``mark``
    (up to ``upto``), and rows whose ``date_updated`` is after ``since``.

    Both are filtered in SQL and streamed: the ``date_updated`` condition selects a superset (a day's
    margin for the vendors' zone handling, SQLite's text and epoch forms) that :func:`_after` decides exactly,
    so an idle target returns no row.
    """
    found: set[str] = set()
    with engine.connect() as conn:
        streaming = conn.execution_options(stream_results=True, yield_per=STREAM_ROWS)
        if mark is not None:
            activity = sa.table("directus_activity", sa.column("id"), sa.column("action"), sa.column("collection"),
                                sa.column("item"))
            for (item,) in streaming.execute(sa.select(activity.c.item).where(
                    activity.c.collection == collection, activity.c.id > mark, activity.c.id <= upto,
                    activity.c.action.in_(ACTIONS))):
                found.add(str(item))
        if since:
            columns = {c["name"] for c in sa.inspect(engine).get_columns(collection)}
            if "date_updated" in columns:
                pk, _ = _key_column(engine, collection)
                table = sa.table(collection, sa.column(pk), sa.column("date_updated"))
                stamp = datetime.fromisoformat(since).astimezone(timezone.utc).replace(tzinfo=None)
                for (key, updated) in streaming.execute(sa.select(table.c[pk], table.c.date_updated).where(
                        _updated_after(engine, table.c.date_updated, stamp))):
                    if _after(updated, stamp):
                        found.add(str(key))
    return found


def _updated_after(engine: sa.Engine, column: sa.ColumnClause[Any], stamp: datetime) -> sa.ColumnElement[bool]:
    """A SQL condition true for every ``date_updated`` later than ``stamp`` (and a few earlier ones)."""
    margin = stamp - timedelta(days=1)
    if engine.dialect.name == "sqlite":
        epoch_ms = int(margin.replace(tzinfo=timezone.utc).timestamp() * 1000)
        kind = sa.func.typeof(column)
        return sa.or_(sa.and_(kind.in_(("integer", "real")), column > epoch_ms),
                      sa.and_(kind == "text", column >= margin.strftime("%Y-%m-%d")))
    return sa.and_(column.is_not(None), column > margin)


def source_keys(ctx: Any, profile: Mapping[str, Any], collection: str, target_ids: set[str]) -> dict[str, str]:
    """``{source key: target key}`` of the ``target_ids`` the content move's ID map (per instance pair, in the
    state store) records for ``collection``; target rows it does not know are left out."""
    from ..content.keys import ID_MAP, pair_identity

    if not target_ids:
        return {}
    scope = pair_identity(ctx.other_instance(profile["source"]), ctx.other_instance(profile["target"]))
    from .sync_profiles import engine_of

    found: dict[str, str] = {}
    wanted = sorted(target_ids)
    engine = engine_of(ctx.state_url)
    if not sa.inspect(engine).has_table(ID_MAP.name):
        return {}  # no content move has written through this state store yet
    with engine.connect() as conn:
        for chunk in _chunks(wanted):
            found.update({str(s): str(t) for s, t in conn.execute(sa.select(ID_MAP.c.source_id, ID_MAP.c.target_id)
                          .where(ID_MAP.c.source == scope[0], ID_MAP.c.target == scope[1],
                                 ID_MAP.c.collection == collection, ID_MAP.c.target_id.in_(chunk)))})
    return found


def _chunks(items: list[Any], size: int | None = None) -> Iterator[list[Any]]:
    """``items`` in lists of at most ``size`` (default :data:`CHUNK`: under SQLite's 999 bound parameters)."""
    size = size or CHUNK
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _after(value: Any, stamp: datetime) -> bool:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return False
    if isinstance(value, (int, float)):  # SQLite stores CairnCMS timestamps as epoch milliseconds
        value = datetime.fromtimestamp(value / 1000, timezone.utc)
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        return value > stamp
    return False


def _combine(*specs: Mapping[str, Any] | None) -> dict[str, Any] | None:
    given = [dict(s) for s in specs if s]
    if not given:
        return None
    return given[0] if len(given) == 1 else {"_and": given}


def effective_mode(profile: Mapping[str, Any]) -> str:
    """The content move's mode for the profile's conflict policy: target-wins never overwrites nor deletes."""
    return "skip-existing" if profile["conflict"] == "target-wins" else profile["mode"]


def run(ctx: Any, p: dict[str, Any]) -> dict[str, Any]:
    """One run of profile ``p["name"]`` (see the module's docstring); the report says what happened."""
    from .. import operations
    from ..service.state import instance_scope

    store = SyncStore(ctx.state_url, instance_scope(ctx.instance()))
    profile = store.get(p["name"])
    trigger, slot, dry_run, full = p["trigger"], p.get("slot"), bool(p["dry_run"]), bool(p["full"])
    base = {"name": profile["name"], "trigger": trigger, "slot": slot, "dry_run": dry_run, "full": full,
            "job_id": ctx.job_id}
    if not profile["enabled"]:
        if trigger == "schedule":
            return {**base, "status": "ok", "skipped": "the profile is paused"}
        raise InvalidInput(f"The sync profile {profile['name']!r} is paused; a paused profile does nothing",
                           hint=f"resume it first: cairn-migrate sync resume {profile['name']}")
    # A dry run writes nothing but its history line: it never takes the run lock, so the slot's own run
    # (a scheduled one firing meanwhile) still happens.
    with (store.without_lock(profile["id"]) if dry_run else store.run_lock(profile["id"])) as held:
        if held is None:
            return {**base, "status": "ok", "skipped": "another run of this profile holds its run lock"}
        conn, last_slot = held
        if slot and last_slot and last_slot >= slot:
            return {**base, "status": "ok", "skipped": f"the slot {slot} has run already"}
        started = now_iso()
        try:
            report = _steps(ctx, operations, store, conn, profile, base, full=full, dry_run=dry_run)
        except MigrateError as exc:
            if exc.code != "cancelled":
                raise
            cancelled = exc  # recorded (no watermark moves; the slot counts as run), then the job ends cancelled
            before = store.watermarks(profile["id"], "source", conn)
            report = {**base, "status": "cancelled", "steps": {}, "counts": {}, "watermark_before": before,
                      "watermark_after": before, "error": {"code": exc.code, "message": first_line(exc.message)}}
        report["started_at"], report["finished_at"] = started, now_iso()
        if report["status"] in ("failed", "partial", "invalid") and profile.get("alert_webhook") and not dry_run:
            report["alert"] = send_alert(profile["alert_webhook"], report)
        store.record_run(conn, profile["id"], {
            "job_id": ctx.job_id, "trigger": trigger, "slot": None if dry_run else slot, "full": full,
            "dry_run": dry_run, "started_at": started, "finished_at": report["finished_at"],
            "outcome": report["status"], "counts": report["counts"], "watermark_before": report["watermark_before"],
            "watermark_after": report["watermark_after"], "report": _summary(report), "error": report.get("error"),
            "alert": report.get("alert")})
    if report["status"] == "cancelled":
        raise cancelled
    return report


def _summary(report: Mapping[str, Any]) -> dict[str, Any]:
    """What the history keeps of a run's report: everything but the content steps' full reports."""
    return {**{k: v for k, v in report.items() if k != "steps"},
            "steps": {c: {k: v for k, v in step.items() if k != "report"} for c, step in report["steps"].items()}}


def _steps(ctx: Any, operations: Any, store: SyncStore, conn: sa.Connection, profile: dict[str, Any],
           base: dict[str, Any], *, full: bool, dry_run: bool) -> dict[str, Any]:
    from ..instance.database import open_engine

    before = store.watermarks(profile["id"], "source", conn)
    target_before = store.watermarks(profile["id"], "target", conn)
    report: dict[str, Any] = {**base, "source": profile["source"], "target": profile["target"],
                              "conflict": profile["conflict"], "mode": effective_mode(profile), "promote": None,
                              "steps": {}, "conflicts": {}, "counts": {}, "watermark_before": before,
                              "watermark_after": dict(before), "status": "ok"}
    collections = list(profile["collections"])
    try:
        source_engine = open_engine(ctx.other_instance(profile["source"]))
    except MigrateError as exc:
        return _failed(report, exc)
    target_engine = None
    try:
        upto = high_mark(source_engine)
        report["high_mark"] = upto
        # No watermark yet: a full re-scan, or (initial: from-now) nothing before this run's high mark.
        start = {c: upto for c in collections} if profile.get("initial") == "from-now" else {}
        marks = {} if full else {**start, **before}
        last = store.last_run(profile["id"], conn)
        carried = ((last.get("report") or {}).get("activity_gaps") or []) if last else []
        low = min((marks[c] for c in collections if c in marks), default=None)
        report["activity_gaps"] = activity_gaps(source_engine, low, upto, carried, now_iso()) if low is not None else []
        recheck = [int(g) for g, _ in carried]
        changes = read_changes(source_engine, collections, marks, upto, recheck)
        for collection, change in changes.items():  # edits of related rows re-move the roots they belong to
            related = related_changes(source_engine, collection, marks[collection], upto, recheck)
            extra = sorted(set(related["keys"]) - set(change["upsert"]) - set(change["delete"]))
            if related["rows"]:
                change["related"] = {"rows": related["rows"], "keys": extra}
            change["upsert"] = sorted(set(change["upsert"]) | set(extra))
        if profile["conflict"] == "skip-if-target-modified":
            target_engine = open_engine(ctx.other_instance(profile["target"]))
            target_upto = high_mark(target_engine)
        if profile["promote_first"]:
            ctx.progress.check_cancelled()
            report["promote"] = _promote(ctx, operations, profile, dry_run)
            if report["promote"]["outcome"] not in ("ok", "differences"):
                report["status"] = "failed" if report["promote"]["outcome"] != "invalid" else "invalid"
                report["error"] = {"step": "promote", "message": report["promote"].get("message")
                                   or f"promote finished {report['promote']['outcome']}"}
                return report
        ctx.progress.progress(items_done=0, items_total=len(collections))
        failures = 0
        for collection in collections:
            ctx.progress.check_cancelled()
            step = _collection_step(ctx, operations, profile, collection, changes.get(collection), source_engine,
                                    target_engine, target_before.get(collection), target_upto if target_engine else 0,
                                    last["started_at"] if last else None, dry_run)
            report["steps"][collection] = step
            report["counts"][collection] = step["counts"]
            if step.get("conflicts"):
                report["conflicts"][collection] = step["conflicts"]
            if step["outcome"] in ("ok", "differences"):
                report["watermark_after"][collection] = upto
                if step["outcome"] == "differences":
                    report["status"] = "differences" if report["status"] == "ok" else report["status"]
            else:
                failures += 1
            ctx.progress.advance(1)
        if failures:
            outcomes = {s["outcome"] for s in report["steps"].values()}
            report["status"] = ("partial" if failures < len(collections)
                                else "invalid" if outcomes == {"invalid"} else "failed")
        if not dry_run:
            saved = {c: m for c, m in report["watermark_after"].items() if before.get(c) != m}
            store.save_watermarks(conn, profile["id"], "source", saved)
            if target_engine is not None:
                store.save_watermarks(conn, profile["id"], "target", {
                    c: target_upto for c in collections if report["steps"][c]["outcome"] in ("ok", "differences")})
        else:
            report["watermark_after"] = dict(before)
    except MigrateError as exc:
        if exc.code == "cancelled":
            raise
        return _failed(report, exc)
    finally:
        source_engine.dispose()
        if target_engine is not None:
            target_engine.dispose()
    return report


def _failed(report: dict[str, Any], exc: MigrateError) -> dict[str, Any]:
    report["status"] = "invalid" if exc.exit_code == 2 else "failed"
    report["error"] = {"code": exc.code, "message": first_line(exc.message), "hint": exc.hint}
    return report


def _promote(ctx: Any, operations: Any, profile: Mapping[str, Any], dry_run: bool) -> dict[str, Any]:
    from .sync_profiles import TOKEN_ENV_PREFIX

    name = profile["target_token_env"] or ""
    if not name.startswith(TOKEN_ENV_PREFIX):
        return {"outcome": "invalid", "message": f"target_token_env {name!r} does not start {TOKEN_ENV_PREFIX}: only "
                "those variables of the sidecar's environment may hold a target's token"}
    token = os.environ.get(name)
    if not token:
        return {"outcome": "invalid", "message": f"${profile['target_token_env']} is not set in the sidecar's "
                "environment: promote needs the target's admin token"}
    try:
        promote_ctx = _with_secrets(ctx, {"to_token": token})
        report, outcome = operations.run("promote", promote_ctx, {"from": profile["source"], "to": profile["target"],
                                                                  "dry_run": dry_run})
    except MigrateError as exc:
        return {"outcome": "invalid" if exc.exit_code == 2 else "failed", "message": first_line(exc.message)}
    return {"outcome": outcome.value, "changes": report.get("changes"), "applied": report.get("applied"),
            "refused": report.get("refused")}


def _with_secrets(ctx: Any, secrets: Mapping[str, Any]) -> Any:
    from dataclasses import replace

    return replace(ctx, secrets={**dict(ctx.secrets), **secrets})


def _collection_step(ctx: Any, operations: Any, profile: Mapping[str, Any], collection: str,
                     change: Mapping[str, Any] | None, source_engine: sa.Engine, target_engine: sa.Engine | None,
                     target_mark: int | None, target_upto: int, since: str | None, dry_run: bool) -> dict[str, Any]:
    """One collection's content move (or nothing, when no key of it changed)."""
    mode = effective_mode(profile)
    step: dict[str, Any] = {"mode": mode, "rescan": change is None}
    try:
        pk, integer = _key_column(source_engine, collection)
        upserts = list(change["upsert"]) if change else []
        deletes = list(change["delete"]) if change else []
        if change is not None:
            step["changed"] = {"upsert": upserts, "delete": deletes if mode == "mirror" else [],
                               "delete_ignored": [] if mode == "mirror" else deletes}
            if change.get("related"):
                step["related"] = change["related"]
        conflicts: set[str] = set()
        if target_engine is not None and (change is None or upserts or deletes):
            modified = target_modified(target_engine, collection, target_mark, target_upto, since)
            # The target's keys in the source's key space (integer keys are remapped by the content move):
            # a target row the ID map does not know came from no source row and blocks nothing.
            by_source = source_keys(ctx, profile, collection, modified) if integer else {k: k for k in modified}
            conflicts = set(by_source) if change is None else set(by_source) & set(upserts + deletes)
            step["conflicts"] = sorted(conflicts)
            if integer:
                step["conflicts_target"] = sorted(by_source[k] for k in conflicts)
        # The content moves to run: (key filter, exclusion, mode).  A content move applies its filter to the
        # source's rows and, for a mirror's deletions, to the target's: a filter on integer keys (which the
        # move renumbers) would pick unrelated target rows there, so integer-keyed collections never run a
        # key-filtered mirror: their upserts run as merge, their deletions as a mirror of the profile's filter.
        remapped_mirror = integer and mode == "mirror"
        moves: list[tuple[dict[str, Any] | None, dict[str, Any] | None, str]] = []
        if change is not None:
            wanted = [k for k in upserts + (deletes if mode == "mirror" else []) if k not in conflicts]
            if not wanted:
                step.update(outcome="ok", counts={"changed": 0}, skipped="no changes")
                return step
            doomed = [k for k in deletes if k not in conflicts] if mode == "mirror" else []
            if len(wanted) > MAX_KEYS:
                step["rescan"] = True  # too many keys for key filters: the collection's rows, as a re-scan
            elif remapped_mirror:
                ups = [k for k in upserts if k not in conflicts]
                moves += [({pk: {"_in": chunk}}, None, "merge") for chunk in _chunks(_keys(ups, integer))]
                if doomed and conflicts:
                    step["delete_deferred"] = doomed  # a mirror of the whole filter would take the conflicts too
                elif doomed:
                    step["delete_rescan"] = True
                    moves.append((None, None, "mirror"))
            else:  # one content move per CHUNK keys, so no statement binds more parameters than SQLite allows
                moves += [({pk: {"_in": chunk}}, None, mode) for chunk in _chunks(_keys(wanted, integer))]
        if change is None or step.get("rescan"):
            excluded = None
            rescan_mode = mode
            if conflicts:
                # The re-scan leaves the conflicting rows out: NOT IN lists of at most CHUNK keys each.
                excluded = {"_and": [{pk: {"_nin": chunk}} for chunk in _chunks(_keys(sorted(conflicts), integer))]}
                if remapped_mirror:  # the exclusion (source keys) cannot be applied to the target's deletions
                    rescan_mode = "merge"
                    step["deletes_skipped"] = "integer keys are renumbered on the target and rows changed on it " \
                        "are left out: this re-scan merges; run it again once the conflicts are settled"
            moves.append((None, excluded, rescan_mode))
        if not moves:
            step.update(outcome="ok", counts={})
            return step
        if "content" not in {op.name for op in operations.all_operations()}:
            raise MigrateError("This cairn-migrate has no content operation, so a sync's content step cannot run",
                               hint="upgrade cairn-migrate to a version with `cairn-migrate content move`")
        reports, outcomes = [], []
        for keys_filter, excluded, move_mode in moves:
            params: dict[str, Any] = {"from": profile["source"], "to": profile["target"], "collections": [collection],
                                      "filter": _combine((profile.get("filters") or {}).get(collection), keys_filter,
                                                         excluded),
                                      "mode": move_mode, "dry_run": dry_run}
            if move_mode == "mirror":
                params["max_delete"] = profile["max_delete"]
            if profile.get("mask"):
                content = next((op for op in operations.all_operations() if op.name == "content"), None)
                if content is not None and "mask" not in content.schema().fields:
                    raise InvalidInput(f"The profile names the masking profile {profile['mask']!r}, but this "
                                       "version's content operation takes no mask",
                                       hint="drop mask from the profile, or upgrade")
                params["mask"] = profile["mask"]
            if "params" not in step:
                step["params"] = {k: v for k, v in params.items() if k not in ("from", "to")}
            ctx.progress.check_cancelled()
            report, outcome = operations.run("content", _with_progress(ctx, StepProgress(ctx.progress)), params)
            reports.append(report)
            outcomes.append(outcome.value)
            if outcome.value not in ("ok", "differences"):
                break
    except MigrateError as exc:
        if exc.code == "cancelled":
            raise
        step.update(outcome="invalid" if exc.exit_code == 2 else "failed", counts={},
                    error={"code": exc.code, "message": first_line(exc.message), "hint": exc.hint})
        return step
    if len(moves) > 1:
        step["batches"] = len(reports)
    worst = next((o for o in ("invalid", "failed", "partial", "differences") if o in outcomes), "ok")
    counts: dict[str, Any] = {}
    for report in reports:
        _add_counts(counts, report.get("plan") or {})
    step.update(outcome=worst, counts=counts, report=reports[0] if len(reports) == 1 else {"batches": reports},
                refused=[r for report in reports for r in report.get("refused") or []])
    return step


class StepProgress:
    """A content step's progress inside a run: the run counts collections as its items, so the step's own row
    counters are not passed on; its copied bytes, log lines and cancel checks are."""

    def __init__(self, run: Any) -> None:
        self.run = run

    def progress(self, items_done: int | None = None, items_total: int | None = None, bytes_done: int | None = None,
                 bytes_total: int | None = None) -> None:
        return None

    def advance(self, items: int = 0, bytes: int = 0) -> None:  # noqa: A002 - the Progress protocol's name
        if bytes:
            self.run.advance(bytes=bytes)

    def log(self, message: str) -> None:
        self.run.log(message)

    def check_cancelled(self) -> None:
        self.run.check_cancelled()


def _with_progress(ctx: Any, progress: Any) -> Any:
    from dataclasses import replace

    return replace(ctx, progress=progress)


def _add_counts(total: dict[str, Any], more: Mapping[str, Any]) -> None:
    """Add the content moves' plan counts (nested dicts of numbers) of one batch to ``total``."""
    for key, value in more.items():
        if isinstance(value, Mapping):
            _add_counts(total.setdefault(key, {}), value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and isinstance(total.get(key, 0), (int, float)):
            total[key] = total.get(key, 0) + value
        else:
            total[key] = value


def send_alert(url: str, report: Mapping[str, Any]) -> dict[str, Any]:
    """POST the run's report (without the content steps' full reports) to ``url``; never raises.

    ``url`` was allowed when the profile was stored (:func:`~.sync_profiles.check_instances`, with the
    shell's ``CAIRN_MIGRATE_WEBHOOK_HOSTS``); redirects are not followed, and what the history keeps of a
    failure is only "status N" or "unreachable" (never the connection error's text, which would let a
    caller probe hosts through the history).
    """
    import requests

    from ..instance import bounded_http
    from ..instance.timeouts import connect_timeout, read_timeout

    body = {"event": "cairn-migrate.sync.failed", **_summary({**report, "steps": report.get("steps", {})})}
    read = min(30.0, read_timeout())
    try:  # bounded: a receiver that trickles its answer holds the run's worker no longer than a minute
        with bounded_http.session() as http:
            response = bounded_http.request(http, "POST", url, json=body, timeout=(connect_timeout(), read),
                                            allow_redirects=False, within=connect_timeout() + read)
    except requests.RequestException:
        return {"url": url, "error": "alert failed (unreachable)"}
    except bounded_http.RemoteLimit:
        return {"url": url, "error": "alert failed (too slow or too large an answer)"}
    if response.status_code >= 300:
        return {"url": url, "status": response.status_code, "error": f"alert failed (status {response.status_code})"}
    return {"url": url, "status": response.status_code}
