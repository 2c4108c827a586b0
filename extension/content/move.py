"""``content move``: plan, then apply through the direct database path or through the target's API.

The plan reads the source in one consistent snapshot (the closure and its rows) and the target
(its rows, users, objects) and writes nothing.  The apply plans first (a refusal stops it before
any write, bytes included), then walks again writing: file bytes as their rows come (copied and
verified before the transaction commits), rows in one transaction on the target, mirror deletes
last, all rolled back on any error or refusal; the ID map is saved only after the commit.

``via="api"`` walks the same way (the source and the target read the same, so the plan is the same) but
hands the writes to :class:`~cairn_migrate.content.sink_api.ApiSink`: the target's API, in batches, a
few requests at a time.  That cannot be one transaction: when a request fails for good, the rows the
target acknowledged stay, their keys are saved to the ID map (so a re-run updates them rather than
creating them again), the rest of the walk stops, and the report says ``partial`` with the failure.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import sqlalchemy as sa

from ..errors import Interrupted, InvalidInput, MigrateError, interrupts_held
from ..instance.database import Database, consistent_snapshot
from ..instance.instance import Instance
from ..progress import NullProgress, Progress
from ..service.state import database_identity
from . import keys
from .closure import FILES, USERS, carry_files, compute, load_graph, primary_key
from .filter import compile_filter, parse
from .plan import empty_counts, has_changes, match_users, order, schema_differences
from .sink_api import ApiSink, settle_sent
from .sink_db import DbSink
from .spill import Spill
from .writer import PlanFirst, Walk

def condition(spec: Mapping[str, Any] | None, root: str) -> Callable[[Database], sa.ColumnElement[bool]]:
    """The move's filter on ``root`` as a condition on a source database (bound values, typed per vendor)."""
    def on(db: Database) -> sa.ColumnElement[bool]:
        def convert(name: str, value: Any) -> Any:
            try:
                return keys.value(db, root, name, value)
            except (TypeError, ValueError):
                raise InvalidInput(f"filter on {root}.{name}: {value!r} is not a valid value for that field",
                                   hint="compare a field with a value of its type") from None

        return compile_filter(spec, root, db.columns(root), column=lambda n: keys.column(db, root, n), value=convert)
    return on


def source_graph(src: Database, roots: list[str]) -> Any:
    """The source's relation graph with every linked collection's key (and which keys are integers).

    Every linked collection gets its key, so references beyond the depth are still rewritten; the
    structure must match for the collections the rows may reach or name.

    :raises InvalidInput: a root that is not a user collection of the source, or has no single key column.
    """
    graph = load_graph(src)
    tables = set(src.table_names())
    for root in roots:
        if root not in tables or root.startswith("directus_"):
            users = ", ".join(sorted(t for t in tables if not t.startswith("directus_"))) or "none"
            raise InvalidInput(f"{root} is not a user collection of the source (its collections: {users})",
                               hint="name one of them (the CLI's --collection, the API's 'collections'); "
                               "directus_* tables move only with the rows that reference them")
    linked = {c for link in graph.links for c in (link.many, link.one, *link.allowed) if c}
    for name in sorted((linked | set(roots)) & tables - {USERS}):
        try:
            graph.keys[name] = primary_key(src, name)
        except InvalidInput:
            if name in roots:
                raise
            continue  # not followed: a collection without one key column is never part of a move
        if keys.is_integer(src, name, graph.keys[name]):
            graph.integer.add(name)
    return graph


def _finisher(src: Database, source: Instance, target: Instance, params: Mapping[str, Any], bundle: Any,
              function: Any, walk: Callable[[], Walk]) -> Any:
    """transform.py's finisher for this move: the masking profile, the URL rewriter, the operator's function."""
    from ..bundle.table_schema import reflect_tables
    from .transform import Finisher, UrlRewriter

    finisher = Finisher(context={"source_url": source.public_url, "target_url": target.public_url,
                                 "mode": params.get("mode") or "merge", "transform": params.get("transform")})
    if params.get("mask"):
        from ..masking import prepare

        if not params.get("mask_salt") and not source.secret:
            # a key derived from the (public) profile alone lets anyone holding the target test guesses against
            # its fakes: the README's "a bundle or URL source has no SECRET, so --mask needs --mask-salt"
            raise InvalidInput("--mask needs --mask-salt here: the source has no SECRET to derive the masking key "
                               "from (a bundle or a running instance's URL never carries one), and a key derived from the profile "
                               "alone would let anyone test guesses against the fakes",
                               hint="pass --mask-salt SALT (or set CAIRN_MIGRATE_MASK_SALT); the salt an export "
                               "--full --mask used gives the same fakes")
        tables = bundle.tables if bundle is not None else reflect_tables(src.engine, src.table_names(), src.vendor)
        finisher.mask = prepare(params["mask"], tables, salt=params.get("mask_salt"), secret=source.secret)
    if params.get("rewrite_urls", True):
        finisher.urls = UrlRewriter(source.public_url, target.public_url, lambda i: walk().file_target(i))
    finisher.function = function
    return finisher


def run(source: Instance, target: Instance, params: Mapping[str, Any], *, state_url: str, write: bool,
        progress: Progress | None = None, bundle: Any = None, function: Any = None,
        client: Callable[[], Any] | None = None, record: bool = False, one_pass: bool = False,
        target_view: Any = None) -> dict[str, Any]:
    """Plan (``write=False``) or apply the move ``params`` describe; returns the report.

    What the move learns per row (the closure, target keys, the ID map, what it writes) is kept in a scratch
    SQLite file for this run (:mod:`.spill`), removed when it returns: memory does not grow with the rows.

    :param bundle: a :class:`~cairn_migrate.content.bundle_source.BundleSource` when ``source`` is its scratch copy.
    :param function: the operator's ``--transform`` function (:mod:`.transform`).
    :param client: makes the :class:`~cairn_migrate.content.api_client.ApiClient` of ``via="api"`` (asked only
        when writing).
    :param target_view: a :class:`~cairn_migrate.content.api_source.ApiSource` when ``target`` is the scratch
        mirror of a target given by URL (``via="api"``): its identity, snapshot and bytes are the running target's.
    """
    with Spill.open() as spill:
        return _run(source, target, params, state_url=state_url, write=write, progress=progress, bundle=bundle,
                    function=function, client=client, record=record, one_pass=one_pass, target_view=target_view,
                    spill=spill)


def _run(source: Instance, target: Instance, params: Mapping[str, Any], *, state_url: str, write: bool,
         progress: Progress | None, bundle: Any, function: Any, client: Callable[[], Any] | None, record: bool,
         one_pass: bool, target_view: Any, spill: Spill) -> dict[str, Any]:
    progress = progress or NullProgress()
    via = params.get("via") or "db"
    roots = list(dict.fromkeys(params["collections"]))
    spec = parse(params.get("filter"))
    depth, mode, max_delete = params.get("depth"), params.get("mode") or "merge", params.get("max_delete")
    report: dict[str, Any] = {
        "from": bundle.label if bundle is not None else source.label,
        "to": target_view.label if target_view is not None else target.label, "via": via, "mode": mode,
        "collections": roots, "filter": spec,
        "depth": depth, "dry_run": not write, "schema": {"differences": []}, "plan": {}, "users": {"matched": 0,
        "unmatched": []}, "files": {"copy": 0, "bytes": 0, "storage": {}}, "nulled": {}, "matched_on_target": {},
        "refused": [], "transform": {},
        "changes": False, "applied": False, "partial": False}
    if bundle is None and target_view is None and database_identity(source) == database_identity(target):
        raise InvalidInput(f"The source {source.label} and the target {target.label} are the same instance "
                           "(the same database)", hint="name another instance's .env with --to (or --from)")
    with Database.open(source) as src, Database.open(target) as dst:
        graph = source_graph(src, roots)
        tables = set(src.table_names())
        involved = [name for name in graph.reachable(roots, None if depth is None else depth + 1) if name in tables]
        problems = schema_differences(src, dst, involved,
                                      source_snapshot=bundle.schema_snapshot() if bundle is not None else None,
                                      target_snapshot=target_view.schema_snapshot() if target_view is not None else None)
        if problems:
            report["schema"]["differences"] = problems
            report["refused"].append({
                "message": f"The fields of the moved collections differ between source and target: {'; '.join(problems)}",
                "fix": "align the target's structure first: cairn-migrate promote --from SRC --to DST"})
            return report
        conditions = {root: condition(spec, root) for root in roots}
        origin = bundle.scope if bundle is not None else source
        ending = target_view.scope if target_view is not None else target
        idmap = keys.IdMap(state_url, keys.pair_identity(origin, ending), spill,
                           legacy=keys.pair_identity(origin, target, legacy=True) if target_view is None else None)
        walks: list[Walk] = []
        finisher = _finisher(src, source, target, params, bundle, function, lambda: walks[0])
        finisher.context["write"] = write  # False in the plan (and the apply's first pass), True when writing
        finisher.context["via"] = via
        with consistent_snapshot(src) as sconn, dst.engine.connect() as dconn:
            failure: BaseException | None = None
            committed = False
            if via == "api":  # the target is read between its own API's commits: no transaction held open
                dconn.execution_options(isolation_level="AUTOCOMMIT")
                transaction = None
                sink: Any = ApiSink(dst, dconn, client() if write and client else None,
                                    batch_size=params.get("batch_size") or 100, idmap=idmap if write else None)
            else:
                transaction = dconn.begin()
                sink = DbSink(dst, dconn)
            try:
                if idmap.sent:  # rows an earlier run sent through the API, unanswered: what did the target create?
                    report["resumed"] = settle_sent(idmap, dconn, persist=write or record)
                closure = compute(src, graph, {r: c(src) for r, c in conditions.items()}, depth, sconn, spill)
                # --- value transforms (transform.py): files named by asset URLs, masked emails, created users
                from ..bundle.table_schema import reflect_tables
                from .transform import asset_files
                from .users import create_missing

                defs = {t.name: t for t in reflect_tables(src.engine, sorted(closure.rows), src.vendor)}
                if finisher.urls is not None and (depth is None or depth >= 1) and FILES in graph.keys:
                    named = asset_files(src, sconn, closure, graph,
                                        lambda n: {c.name: c.type for c in defs[n].columns}, finisher.urls)
                    if carry_files(src, graph, closure, named, sconn):
                        defs.update({t.name: t for t in reflect_tables(
                            src.engine, sorted(set(closure.rows) - set(defs)), src.vendor)})
                if one_pass and closure.rows.get(FILES):
                    raise PlanFirst  # rolled back: nothing was written yet
                users = match_users(src, dst, closure.users, sconn, dconn, email_of=_masked_email(finisher.mask))
                created = create_missing(src, dst, users, sconn, dconn, mask=finisher.mask,
                                         sink=sink if write else None) \
                    if params.get("create_users") else {"created": []}
                walk = Walk(src, dst, source, target, graph, closure, users, idmap, mode, write, progress, sink=sink,
                            spill=spill,
                            finisher=finisher, source_files=bundle.files if bundle is not None else None,
                            target_files=target_view.files if target_view is not None else None)
                walks.append(walk)
                walk.children_followed = depth is None or depth >= 1
                walk.one_pass = one_pass
                walk._defs.update({("src", name): definition for name, definition in defs.items()})
                if created["created"]:
                    walk.counts[USERS] = {**empty_counts(), "created": len(created["created"])}
                # the job's counters for this pass: every row of the closure, the bytes copied (writer.py)
                progress.progress(items_done=0, items_total=sum(len(rows) for rows in closure.rows.values()),
                                  bytes_done=0)
                try:
                    _walk(walk, graph, closure, sconn, dconn, conditions, mode, max_delete, roots, write)
                except Exception as exc:  # noqa: BLE001 - the API path records what was written, then says partial
                    if transaction is not None or not write:
                        raise
                    failure = exc  # what the target acknowledged stays: its keys are recorded below
                    sink.settle()
                except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: record what the target acknowledged, then stop
                    if transaction is None and write:
                        with interrupts_held():  # a second Ctrl-C must not lose the acknowledged keys' record
                            unanswered = sink.abandon()
                            idmap.save(walk.written)
                        raise _interrupted_partial(_stop_text(exc), len(walk.written), unanswered) from None
                    raise
                except BaseException:  # anything else that stops the walk: the same record, then stop
                    if transaction is None and write:
                        sink.settle()
                        idmap.save(walk.written)
                    raise
                if transaction is not None:
                    if write and not walk.refused:
                        # D4: the map entries first, as pending (this run's id, the rows' digests), then the
                        # commit, then the entries marked committed: a stop in between leaves pending entries
                        # that the next run keeps only when the target holds what was written
                        idmap.save(walk.written, pending=True)
                        with interrupts_held():  # a signal here must not roll back what is committed (D3/D4)
                            transaction.commit()
                            committed = True  # from here on the pending entries are right: never discarded
                        idmap.commit()
                        idmap.forget(getattr(walk, "gone", []))
                    else:
                        transaction.rollback()
            except BaseException as exc:
                if transaction is not None and not committed:
                    transaction.rollback()
                    if write:
                        _remove_fresh(sink)  # D3: the objects this run wrote are no row's: delete them
                        idmap.discard()  # (a state store down here leaves pending entries the next run resolves)
                    if _unsettled(exc):
                        raise _settled(f"{_stop_text(exc)}: the target's transaction was rolled back, nothing "
                                       "was written") from None
                if transaction is None and not write and _unsettled(exc):
                    raise _settled(f"{_stop_text(exc)} while planning: nothing was written") from None
                raise
            finally:
                sink.close()
        if via == "api" and write:
            report["api"] = {"url": getattr(sink.client, "url", None), "retried": getattr(sink.client, "retried", 0),
                             "files_uploaded": len(sink.uploaded)}
            if failure is not None or walk.refused:
                idmap.save(walk.written)
                report["partial"] = True
                what = str(failure) if isinstance(failure, MigrateError) else f"{type(failure).__name__}: {failure}"
                report["failed"] = [{"message": what if failure else "refused after writes began",
                                     "hint": getattr(failure, "hint", None) or "fix the cause and run the move again: "
                                     "the ID map resumes it without duplicating what was written"}]
    report.update(
        plan={name: walk.counts[name] for name in order(graph, walk.counts)},
        users={"matched": len(users.mapping) - len(users.created), "unmatched": users.unmatched,
               **({"created": created["created"]} if params.get("create_users") else {})},
        transform=finisher.report(),
        files=dict(walk.files), nulled=walk.nulled, refused=walk.refused, changed_fields=walk.changed_fields,
        matched_on_target=walk.adopted)
    report["cascaded"] = {name: len(rows) for name, rows in walk.cascaded.items()}
    report["changes"] = has_changes(report)
    if write and not walk.refused and not report["partial"]:
        if via == "api":
            idmap.save(walk.written)
        report["applied"] = report["changes"]
    elif record and not walk.refused and not report["changes"]:
        idmap.save(walk.written)  # nothing to write: the rows the target already holds (adopted) are the pair's now
    if committed:
        removed, kept = _remove_replaced(walk, idmap)
        if removed or kept:  # the objects updated file rows stopped pointing at (kept: not ours, files check lists them)
            report["files"]["replaced"] = {"removed": removed, "kept": kept}
    elif write and via == "db" and walk.refused and sink.copied:
        _remove_fresh(sink)
    return report


def _stop_text(exc: BaseException) -> str:
    """What stopped the move: ``interrupted`` (Ctrl-C), or the message of the CLI's SIGTERM :class:`Interrupted`."""
    return exc.message if isinstance(exc, Interrupted) else "interrupted"


def _unsettled(exc: BaseException) -> bool:
    """An interrupt whose message does not yet say what the move left (only :func:`_settled` ones do)."""
    return isinstance(exc, KeyboardInterrupt) and not getattr(exc, "settled", False)


def _settled(message: str, hint: str | None = None) -> Interrupted:
    stopped = Interrupted(message, hint=hint)
    stopped.settled = True  # type: ignore[attr-defined]
    return stopped


def _interrupted_partial(what: str, recorded: int, unanswered: int) -> Interrupted:
    """The interrupt of a move through the API, after writes began: partial (exit 4), resumable."""
    stopped = _settled(f"{what}: the move through the target's API stopped part-way (partial); what the "
                          f"target acknowledged is recorded in the ID map ({recorded} keys)" + (
                              f"; {unanswered} requests in flight were not answered in time (a re-run matches "
                              "what they wrote)" if unanswered else ""),
                       hint="run the same command again to resume")
    stopped.exit_code = 4  # the project's partial (operations.Outcome.PARTIAL)
    stopped.code = "partial"
    return stopped


def _remove_fresh(sink: Any) -> None:
    """Delete the objects a failed database-path run wrote (each under a name no committed row points at)."""
    for location, name in getattr(sink, "written", []):
        try:
            location.delete(name)
        except Exception:  # noqa: BLE001 - best effort: files check lists what is left
            pass
    if hasattr(sink, "written"):
        sink.written.clear()


def _remove_replaced(walk: Walk, idmap: Any) -> tuple[int, int]:
    """After the commit: the objects updated file rows stopped pointing at are deleted when the row was this
    pair's (the ID map knew it before this run), else kept (``files check`` lists them)."""
    removed = kept = 0
    for _storage, old_storage, old_name, file_id in walk.replaced:
        if not old_name or not old_storage:
            continue
        if not idmap.owned_before(FILES, file_id.lower()):
            kept += 1
            continue
        try:
            walk._location(walk.dst_instance, "dst", str(old_storage)).delete(str(old_name))
            removed += 1
        except Exception:  # noqa: BLE001 - best effort: files check lists what is left
            kept += 1
    return removed, kept


def _walk(walk: Walk, graph: Any, closure: Any, sconn: sa.Connection, dconn: sa.Connection,
          conditions: Mapping[str, Callable[[Database], sa.ColumnElement[bool]]], mode: str, max_delete: int | None,
          roots: list[str], write: bool) -> None:
    """Every collection parents first, then mirror's deletions (refused without consent or above the ceiling)."""
    names = order(graph, closure.rows)
    walk.reflect_targets(names)
    walk.note_empty(dconn, names)
    for name in [*names, None]:
        try:
            if name is not None:
                walk.collection(name, sconn, dconn)
            elif write and walk.sink.via == "db":
                walk.sink.flush()  # the last rows written (a COPY's refusal named here, not at the commit)
        except sa.exc.DBAPIError as exc:
            if not write or walk.sink.via != "db":
                raise
            refused = getattr(exc, "collection", None) or name  # a COPY's refusal may come after its collection
            raise MigrateError(f"The target refused a write to {refused}: {str(exc.orig).splitlines()[0]}; "
                               "the transaction was rolled back, nothing was written",
                               hint="cairn-migrate content move --dry-run shows the plan; align the "
                               "target's rows or structure and run again") from None
    doomed = walk.deletions(dconn, conditions, sconn) if mode == "mirror" else {}
    cascaded = sum(len(rows) for rows in walk.cascaded.values())
    total = sum(len(rows) for rows in doomed.values()) + cascaded
    also = f" ({cascaded} of them by ON DELETE CASCADE: " + ", ".join(
        f"{n} {', '.join(map(str, rows[:10]))}" for n, rows in walk.cascaded.items()) + ")" if cascaded else ""
    if mode == "mirror" and max_delete is None:
        walk.refuse(f"mirror would delete {total} target rows{also} and needs consent",
                    "pass --max-delete N (the most rows it may delete)")
    elif mode == "mirror" and max_delete is not None and total > max_delete:
        walk.refuse(f"mirror would delete {total} target rows{also}, more than --max-delete {max_delete}",
                    "check the filter, or raise --max-delete")
    if write and not walk.refused:
        try:
            walk.delete(doomed, roots)
        except sa.exc.DBAPIError as exc:  # R3: a refused delete (a foreign key) is named, and rolled back
            if walk.sink.via != "db":
                raise
            raise MigrateError(f"The target refused mirror's deletions: {str(exc.orig).splitlines()[0]}; "
                               "the transaction was rolled back, nothing was written",
                               hint="rows created on the target still point at a row the mirror deletes: "
                               "re-point or delete them there, or narrow --filter") from None


def _masked_email(mask: Any) -> Callable[[str], str] | None:
    """The email a source user has under the profile (a masked clone holds the fakes), when it masks users' emails."""
    if mask is None or "email" not in (mask.profile.rules(USERS) or {}):
        return None
    from ..masking import mask_row

    def email(value: str) -> str:
        masked = mask_row(mask, USERS, {"email": value})
        return str((masked or {}).get("email") or value)
    return email


def plan(source: Instance, target: Instance, params: Mapping[str, Any], *, state_url: str,
         progress: Progress | None = None, bundle: Any = None, function: Any = None,
         target_view: Any = None) -> dict[str, Any]:
    """What the move would do; writes nothing."""
    return run(source, target, params, state_url=state_url, write=False, progress=progress, bundle=bundle,
               function=function, target_view=target_view)


def apply(source: Instance, target: Instance, params: Mapping[str, Any], *, state_url: str,
          progress: Progress | None = None, bundle: Any = None, function: Any = None,
          client: Callable[[], Any] | None = None, target_view: Any = None) -> dict[str, Any]:
    """Plan, and unless refused, move: via db, bytes first, rows in one target transaction, the ID map after its
    commit; via api, through ``client``'s requests, the ID map saved even when the run ends partial."""
    if (params.get("via") or "db") == "db" and not params.get("create_users"):
        # One pass in the target's transaction: a refusal rolls every row back before the commit, so nothing is
        # written; a closure with files (bytes go to storage before the commit) is planned first instead.
        try:
            return run(source, target, params, state_url=state_url, write=True, progress=progress, bundle=bundle,
                       function=function, client=client, one_pass=True, target_view=target_view)
        except PlanFirst:
            pass
    planned = run(source, target, params, state_url=state_url, write=False, progress=progress, bundle=bundle,
                  function=function, record=True, target_view=target_view)
    if planned["refused"] or not planned["changes"]:
        return planned | {"dry_run": False}
    (progress or NullProgress()).progress(bytes_total=planned["files"]["bytes"])
    report = run(source, target, params, state_url=state_url, write=True, progress=progress, bundle=bundle,
                 function=function, client=client, target_view=target_view)
    if planned.get("resumed"):  # the plan settled an earlier run's unanswered writes: the report says so
        report["resumed"] = planned["resumed"]
    return report
