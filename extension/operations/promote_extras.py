"""``promote``'s extras: flows + operations, dashboards + panels, presets, settings, translation strings.

CairnCMS's ``schema``/``config`` apply covers none of these (reference §1.3), so they are planned
here and written by a writer: :class:`ApiWriter` through the target's items API (``/flows``,
``/operations``, ``/dashboards``, ``/panels``, ``/presets``, ``/settings``), or :class:`DbWriter` as rows
in the target's database; the same plan applies both ways.  UUIDs differ between instances, so rows are matched by
natural keys — flows by name + trigger, operations by their flow + ``key``, dashboards by name,
panels by dashboard + name (``@x,y`` when unnamed), role presets by role ``key`` + collection,
global presets by collection — and first by the **ID map** kept in the state store (one per
source and target), so a row renamed on the source updates the target row it was written to
before instead of creating a second one.  What only the target has (flows, operations of kept flows,
dashboards, panels of kept dashboards, role and global presets, translation strings) is kept and listed
(``kept``) unless ``destructive``, which deletes it (``delete``).  User bookmarks and role bookmarks are never copied; settings that point at
files, folders or modules of one instance, and ``mapbox_key``, are never copied either.

Secrets in operation options (option names and ``options.headers`` names matching
:data:`SECRET_OPTION` / :data:`SECRET_HEADER`) are not copied unless ``include_secrets``: the
target keeps what it has for them, and the plan lists them under ``secrets_left_out``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa

from ..errors import InvalidInput
from ..service.jobs import _state_engine
from ..service.state import create_tables

#: The extra kinds ``only`` may name, in the order they are applied.
EXTRA_KINDS = ("flows", "dashboards", "presets", "settings", "translations")
#: Operation option names holding secrets (``options.key`` of item operations holds ids, so not ``key``).
SECRET_OPTION = re.compile(r"authorization|token|secret|password|passwd|api_?key|access_?key|private_?key", re.I)
#: Header names (``options.headers[].header``) holding secrets.
SECRET_HEADER = re.compile(r"authorization|token|secret|password|key|cookie", re.I)
#: ``directus_settings`` fields copied: the project's look and policies.  Left out: ``mapbox_key`` (a
#: secret), ``project_logo``/``public_foreground``/``public_background`` (files), ``storage_default_folder``
#: (a folder), ``module_bar`` (modules installed per instance), ``translation_strings`` (its own kind).
SETTINGS_FIELDS = ("project_name", "project_url", "project_color", "project_descriptor", "public_note",
                   "default_language", "auth_login_attempts", "auth_password_policy", "storage_asset_transform",
                   "storage_asset_presets", "custom_css", "basemaps", "custom_aspect_ratios")

FLOW_FIELDS = ("name", "icon", "color", "description", "status", "trigger", "accountability", "options")
OPERATION_FIELDS = ("name", "key", "type", "position_x", "position_y", "options")
DASHBOARD_FIELDS = ("name", "icon", "note", "color")
PANEL_FIELDS = ("name", "icon", "color", "show_header", "note", "type", "position_x", "position_y", "width",
                "height", "options")
PRESET_FIELDS = ("collection", "search", "layout", "layout_query", "layout_options", "refresh_interval", "filter",
                 "icon", "color")
JSON_COLUMNS = {"options", "layout_query", "layout_options", "filter", "storage_asset_presets", "basemaps",
                "custom_aspect_ratios", "translation_strings", "module_bar"}

#: Boolean columns (SQLite and MySQL hand them over as 0/1).
BOOLEAN_COLUMNS = {"show_header"}

_META = sa.MetaData()
#: source id → target id of every extra row promote wrote, per (source, target) pair.
ID_MAP = sa.Table(
    "cm_promote_id_map", _META,
    sa.Column("source", sa.String(64), primary_key=True),
    sa.Column("target", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(32), primary_key=True),
    sa.Column("source_id", sa.String(64), primary_key=True),
    sa.Column("target_id", sa.String(64), nullable=False),
)


# --------------------------------------------------------------------------- reading rows
def _decoded(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row with its JSON columns parsed (SQLite and MySQL hand them over as text) and its uuids as text
    (PostgreSQL hands them over as ``uuid.UUID``, which the ID map's text ids would never find)."""
    out = {k: str(v) if isinstance(v, uuid.UUID) else v for k, v in dict(row).items()}
    for name in JSON_COLUMNS & out.keys():
        if isinstance(out[name], str):
            try:
                out[name] = json.loads(out[name])
            except ValueError:
                pass
    for name in BOOLEAN_COLUMNS & out.keys():
        out[name] = None if out[name] is None else bool(out[name])
    return out


def rows_of_remote(remote: Any) -> dict[str, Any]:
    """The extras of a running instance, through its API."""
    def items(path: str) -> list[dict[str, Any]]:
        return [_decoded(r) for r in remote.data(f"{path}?limit=-1")]

    settings = remote.data("/settings") or {}
    return {"flows": items("/flows"), "operations": items("/operations"), "dashboards": items("/dashboards"),
            "panels": items("/panels"), "presets": items("/presets"), "roles": items("/roles"),
            "settings": _decoded(settings)}


def rows_of_database(db: Any) -> dict[str, Any]:
    """The extras of an instance read from its database (an ``.env`` source)."""
    with db.engine.connect() as conn:
        def table(name: str) -> list[dict[str, Any]]:
            return [_decoded(r._mapping) for r in conn.execute(sa.text(f"SELECT * FROM directus_{name}"))]

        settings = table("settings")
        return {kind: table(kind) for kind in ("flows", "operations", "dashboards", "panels", "presets", "roles")} | {
            "settings": settings[0] if settings else {}}


# --------------------------------------------------------------------------- the ID map
def url_scope(url: str) -> str:
    """The identity of a running instance named by URL in the ID map (32 hex digits, like ``instance_scope``):
    its canonical origin (:func:`canonical_origin`), so ``localhost`` and ``127.0.0.1``, ``:80`` or not, a
    trailing ``/``, and its ``.env``'s ``PUBLIC_URL`` all name the same instance."""
    return hashlib.sha256(canonical_origin(url).encode("utf-8")).hexdigest()[:32]


def legacy_url_scope(url: str) -> str:
    """The URL identity of the ID map's rows before canonical origins (the URL as written): migrated on use."""
    parts = urlsplit(url)
    text = f"{parts.scheme}://{parts.netloc.lower()}{parts.path.rstrip('/')}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def canonical_origin(url: str) -> str:
    """``scheme://address:port/path``: the host resolved to its address (the lowest IPv4 one, else IPv6; any
    loopback address is ``loopback``), the scheme's default port written out, the path without its last ``/``.
    A host that does not resolve keeps its lower-cased name."""
    import ipaddress
    import socket

    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
        addresses = sorted({ipaddress.ip_address(info[4][0]) for info in infos},
                           key=lambda a: (a.version, a.packed))
    except (OSError, ValueError, UnicodeError):
        addresses = []
    if addresses:
        address = addresses[0]
        host = "loopback" if any(a.is_loopback for a in addresses) else str(address)
    return f"{parts.scheme}://{host}:{port}{parts.path.rstrip('/')}"


class IdMap:
    """The ID map of one (source, target) pair in the state store."""

    def __init__(self, state_url: str, scope: tuple[str, str], legacy: list[tuple[str, str]] | None = None) -> None:
        """``legacy``: the pair's identities as older versions wrote them; their rows move to ``scope`` once."""
        self.engine = _state_engine(state_url)
        create_tables(self.engine, _META)
        self.scope = scope
        self._migrate([pair for pair in legacy or [] if pair != scope])
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(ID_MAP.c.kind, ID_MAP.c.source_id, ID_MAP.c.target_id).where(
                ID_MAP.c.source == scope[0], ID_MAP.c.target == scope[1]))
            self.known = {(r.kind, r.source_id): r.target_id for r in rows}

    def _migrate(self, pairs: list[tuple[str, str]]) -> None:
        """Rows recorded under an older identity of this pair become this pair's (those it already has win)."""
        if not pairs:
            return
        with self.engine.begin() as conn:
            have = {(r.kind, r.source_id) for r in conn.execute(sa.select(ID_MAP.c.kind, ID_MAP.c.source_id).where(
                ID_MAP.c.source == self.scope[0], ID_MAP.c.target == self.scope[1]))}
            for source, target in pairs:
                rows = conn.execute(sa.select(ID_MAP.c.kind, ID_MAP.c.source_id, ID_MAP.c.target_id).where(
                    ID_MAP.c.source == source, ID_MAP.c.target == target)).all()
                for row in rows:
                    if (row.kind, row.source_id) not in have:
                        conn.execute(ID_MAP.insert().values(source=self.scope[0], target=self.scope[1], kind=row.kind,
                                                            source_id=row.source_id, target_id=row.target_id))
                        have.add((row.kind, row.source_id))
                conn.execute(ID_MAP.delete().where(ID_MAP.c.source == source, ID_MAP.c.target == target))

    def get(self, kind: str, source_id: Any) -> str | None:
        return self.known.get((kind, str(source_id)))

    def put(self, kind: str, source_id: Any, target_id: Any) -> None:
        """Record (or correct) where a source row went; written at once, so a failed run keeps what it did."""
        key = (kind, str(source_id))
        if self.known.get(key) == str(target_id):
            return
        where = (ID_MAP.c.source == self.scope[0], ID_MAP.c.target == self.scope[1], ID_MAP.c.kind == kind,
                 ID_MAP.c.source_id == str(source_id))
        with self.engine.begin() as conn:
            conn.execute(ID_MAP.delete().where(*where))
            conn.execute(ID_MAP.insert().values(source=self.scope[0], target=self.scope[1], kind=kind,
                                                source_id=str(source_id), target_id=str(target_id)))
        self.known[key] = str(target_id)


# --------------------------------------------------------------------------- secrets
def split_secrets(options: Any, include: bool) -> tuple[Any, list[str]]:
    """``options`` without its secrets (unless ``include``), and the names of those left out."""
    if include or not isinstance(options, Mapping):
        return options, []
    kept, left = {}, []
    for name, value in options.items():
        if SECRET_OPTION.search(name):
            left.append(f"options.{name}")
        elif name == "headers" and isinstance(value, list):
            headers = [h for h in value if not (isinstance(h, Mapping) and SECRET_HEADER.search(str(h.get("header", ""))))]
            left += [f"options.headers[{h['header']}]" for h in value if h not in headers]
            kept[name] = headers
        else:
            kept[name] = value
    return kept, left


def _with_target_secrets(options: Any, target_options: Any) -> Any:
    """Source options without secrets, plus the target's own secrets (which promote never overwrote)."""
    if not isinstance(options, Mapping) or not isinstance(target_options, Mapping):
        return options
    merged = dict(options)
    for name, value in target_options.items():
        if SECRET_OPTION.search(name):
            merged[name] = value
    theirs = [h for h in target_options.get("headers") or [] if isinstance(h, Mapping)
              and SECRET_HEADER.search(str(h.get("header", "")))]
    if theirs:
        merged["headers"] = list(merged.get("headers") or []) + theirs
    return merged


# --------------------------------------------------------------------------- matching
class Kind:
    """One kind's plan: each source row matched to a target row (ID map first, then natural key)."""

    def __init__(self, name: str, idmap: IdMap) -> None:
        self.name, self.idmap = name, idmap
        self.create: list[dict[str, Any]] = []
        self.update: list[dict[str, Any]] = []
        self.unchanged: list[str] = []
        #: Target rows the source lacks: deleted only when ``destructive`` (``delete``), else ``kept``.
        self.delete: list[dict[str, Any]] = []
        self.kept: list[str] = []
        #: source id → target id of every row matched (recorded in the ID map when applied).
        self.matched: dict[Any, Any] = {}
        self.labels: dict[Any, str] = {}

    def match(self, label: str, source_id: Any, wanted: dict[str, Any], by_id: Mapping[str, Any],
              by_key: Mapping[Any, Any], key: Any, compare: Mapping[str, Any] | None = None) -> None:
        """Plan one row: ``wanted`` are the values the target should hold, compared with ``compare`` (default:
        the matched target row's); keys starting with ``_`` ride along for apply and are never compared."""
        existing = self.find(source_id, by_id, by_key, key)
        self.labels[source_id] = label
        step = {"label": label, "source_id": source_id, "values": wanted}
        if existing is None:
            self.create.append(step)
            return
        step["target_id"] = self.matched[source_id] = existing["id"]
        current = compare if compare is not None else {k: existing.get(k) for k in wanted}
        changed = sorted(k for k in wanted if not k.startswith("_") and _norm(wanted[k]) != _norm(current.get(k)))
        if changed:
            self.update.append(step | {"fields": changed})
        else:
            self.unchanged.append(label)

    def find(self, source_id: Any, by_id: Mapping[Any, Any], by_key: Mapping[Any, Any], key: Any) -> Any:
        """The target row of a source row: the one the ID map names if it still exists, else by natural key."""
        mapped = self.idmap.get(self.name, source_id)
        return (by_id.get(mapped) if mapped else None) or by_key.get(key)

    def target_only(self, label: str, target_id: Any, destructive: bool) -> None:
        """A target row the source lacks: planned as a delete with ``destructive``, else kept (and listed)."""
        if destructive:
            self.delete.append({"label": label, "target_id": target_id})
        else:
            self.kept.append(label)

    def report(self) -> dict[str, Any]:
        return {"delete": [s["label"] for s in self.delete],
                "create": [s["label"] for s in self.create],
                "update": [f"{s['label']} ({', '.join(s['fields'])})" for s in self.update],
                "unchanged": self.unchanged, "kept": self.kept,
                "counts": {"delete": len(self.delete), "create": len(self.create), "update": len(self.update),
                           "unchanged": len(self.unchanged), "kept": len(self.kept)}}


def _norm(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _index(rows: list[dict[str, Any]], key: Any) -> dict[Any, dict[str, Any]]:
    return {key(r): r for r in rows}


def _panel_key(dashboard_name: str, panel: Mapping[str, Any]) -> tuple[str, str]:
    """Panels by dashboard + name; unnamed ones by their position on the dashboard (``@x,y``)."""
    return dashboard_name, panel.get("name") or f"@{panel.get('position_x')},{panel.get('position_y')}"


# --------------------------------------------------------------------------- the plan
#: Settings that usually differ per instance: still promoted by default (the source is the reference), but named
#: in the plan with the way to keep the target's (``exclude_settings``).
PER_INSTANCE_SETTINGS = ("project_url", "project_name")


def plan_extras(src: dict[str, Any], dst: dict[str, Any], only: list[str], idmap: IdMap,
                include_secrets: bool, destructive: bool = False,
                exclude_settings: tuple[str, ...] = ()) -> tuple[dict[str, Any], dict[str, Kind]]:
    """The plan of every extra kind in ``only``: per kind create/update/unchanged, plus secrets left out, and the
    target's rows the source lacks (``delete`` with ``destructive``, else ``kept``)."""
    notes: dict[str, Any] = {}
    kinds: dict[str, Kind] = {}
    if "flows" in only:
        kinds["flows"], kinds["operations"] = _plan_flows(src, dst, idmap, include_secrets, notes)
    if "dashboards" in only:
        kinds["dashboards"], kinds["panels"] = _plan_dashboards(src, dst, idmap)
    if "presets" in only:
        kinds["presets"] = _plan_presets(src, dst, idmap)
        personal = [r for r in src["presets"] if r.get("user") or r.get("bookmark")]
        if personal:  # never promoted: a person's own bookmarks and layouts
            notes["presets"] = {"left_out": len(personal)}
    if "settings" in only:
        kinds["settings"] = _plan_settings(src, dst, idmap, exclude_settings)
        notes["settings"] = {"excluded": [n for n in exclude_settings if n in SETTINGS_FIELDS],
                             "per_instance": [step["label"] for step in kinds["settings"].update
                                              if step["label"] in PER_INSTANCE_SETTINGS]}
    if "flows" in kinds:  # a webhook flow created or updated: it is triggered at its own id on each instance
        created = {step["source_id"] for step in kinds["flows"].create}
        written = created | {step["source_id"] for step in kinds["flows"].update}
        notes.setdefault("flows", {})["webhooks"] = [
            f"{kinds['flows'].labels[f['id']]}: triggered at the target's own URL, /flows/trigger/"
            + ("<its new id>" if f["id"] in created else str(kinds["flows"].matched.get(f["id"])))
            + f" (the source's: /flows/trigger/{f['id']})"
            for f in src["flows"] if f.get("trigger") == "webhook" and f["id"] in written
            and (f["id"] in created or str(kinds["flows"].matched.get(f["id"])) != str(f["id"]))]
    if "translations" in only:
        kinds["translations"] = _plan_translations(src, dst, idmap)
    _plan_target_only(dst, kinds, destructive)
    return {name: kind.report() | notes.get(name, {}) for name, kind in kinds.items()}, kinds


def _plan_flows(src: dict[str, Any], dst: dict[str, Any], idmap: IdMap, include_secrets: bool,
                notes: dict[str, Any]) -> tuple[Kind, Kind]:
    """Flows by name + trigger, operations by flow + key (their options compared without secrets), then links."""
    flows, operations = Kind("flows", idmap), Kind("operations", idmap)
    dst_flows_by_id = {r["id"]: r for r in dst["flows"]}
    dst_flows = _index(dst["flows"], lambda r: (r["name"], r.get("trigger")))
    src_flow_names = {r["id"]: (r["name"], r.get("trigger")) for r in src["flows"]}
    for flow in src["flows"]:
        flows.match(f"{flow['name']} ({flow.get('trigger')})", flow["id"], {k: flow.get(k) for k in FLOW_FIELDS},
                    dst_flows_by_id, dst_flows, (flow["name"], flow.get("trigger")))
    dst_flow_names = {r["id"]: (r["name"], r.get("trigger")) for r in dst["flows"]}
    dst_ops_by_id = {r["id"]: r for r in dst["operations"]}
    dst_ops = _index(dst["operations"], lambda r: (dst_flow_names.get(r["flow"]), r["key"]))
    left_out = []
    for op in src["operations"]:
        flow_key = src_flow_names.get(op["flow"])
        options, secrets = split_secrets(op.get("options"), include_secrets)
        label = f"{flow_key[0]}/{op['key']}" if flow_key else op["key"]
        left_out += [f"{label} {name}" for name in secrets]
        mapped = operations.find(op["id"], dst_ops_by_id, dst_ops, (flow_key, op["key"]))
        compare = None
        if mapped is not None and not include_secrets:
            compare = {k: mapped.get(k) for k in OPERATION_FIELDS} | {
                "options": split_secrets(mapped.get("options"), False)[0]}
        operations.match(label, op["id"], {k: op.get(k) for k in OPERATION_FIELDS} | {"options": options},
                         dst_ops_by_id, dst_ops, (flow_key, op["key"]), compare)
    # The links (flow.operation, resolve, reject) compare as remapped ids: the target row the source's linked
    # operation matched (by the ID map or its natural key) against the target's link.  Natural keys would differ
    # for a renamed flow (its operations' keys carry the flow's name) while no link moved.
    _plan_links(flows, src["flows"], dst_flows_by_id, ("operation",), operations.matched)
    _plan_links(operations, src["operations"], dst_ops_by_id, ("resolve", "reject"), operations.matched)
    notes["operations"] = {"secrets_left_out": left_out}
    return flows, operations


def _plan_links(kind: Kind, rows: list[dict[str, Any]], targets: Mapping[Any, Mapping[str, Any]],
                links: tuple[str, ...], op_matched: Mapping[Any, Any]) -> None:
    """Add the links that point elsewhere on the target to the row's update (an unchanged row becomes one).

    ``op_matched``: source operation id → the target operation it matched (none: it is created, so a link to it
    differs)."""
    steps = {step["source_id"]: step for step in kind.update}

    def remapped(source_id: Any) -> Any:
        return None if source_id is None else op_matched.get(source_id, ("new", source_id))

    for row in rows:
        target_row = targets.get(kind.matched.get(row["id"]))
        if target_row is None:
            continue  # created: its links are written with it
        differs = [link for link in links if str(remapped(row.get(link))) != str(target_row.get(link))
                   if not (row.get(link) is None and target_row.get(link) is None)]
        if not differs:
            continue
        if row["id"] in steps:
            steps[row["id"]]["fields"] += differs
            continue
        label = kind.labels[row["id"]]
        kind.unchanged.remove(label)
        kind.update.append({"label": label, "source_id": row["id"], "target_id": target_row["id"], "values": {},
                            "fields": differs})


def _plan_dashboards(src: dict[str, Any], dst: dict[str, Any], idmap: IdMap) -> tuple[Kind, Kind]:
    """Dashboards by name, panels by dashboard + name (or position)."""
    dashboards, panels = Kind("dashboards", idmap), Kind("panels", idmap)
    dst_by_id = {r["id"]: r for r in dst["dashboards"]}
    for dashboard in src["dashboards"]:
        dashboards.match(dashboard["name"], dashboard["id"], {k: dashboard.get(k) for k in DASHBOARD_FIELDS},
                         dst_by_id, _index(dst["dashboards"], lambda r: r["name"]), dashboard["name"])
    src_names = {r["id"]: r["name"] for r in src["dashboards"]}
    dst_names = {r["id"]: r["name"] for r in dst["dashboards"]}
    dst_panels = _index(dst["panels"], lambda r: _panel_key(dst_names.get(r["dashboard"], ""), r))
    dst_panels_by_id = {r["id"]: r for r in dst["panels"]}
    for panel in src["panels"]:
        key = _panel_key(src_names.get(panel["dashboard"], ""), panel)
        panels.match("/".join(key), panel["id"], {k: panel.get(k) for k in PANEL_FIELDS} | {"_dashboard": panel["dashboard"]},
                     dst_panels_by_id, dst_panels, key)
    return dashboards, panels


def _plan_presets(src: dict[str, Any], dst: dict[str, Any], idmap: IdMap) -> Kind:
    """Role presets (role key + collection) and global presets (collection); never bookmarks or users' presets."""
    presets = Kind("presets", idmap)

    def key(row: Mapping[str, Any], roles: Mapping[str, str]) -> tuple[str, str, str] | None:
        if row.get("user") or row.get("bookmark"):
            return None
        return ("role", roles.get(row["role"], "?"), row["collection"]) if row.get("role") else ("global", "", row["collection"])

    src_roles = {r["id"]: r.get("key") for r in src["roles"]}
    dst_roles = {r["id"]: r.get("key") for r in dst["roles"]}
    dst_index = {k: r for r in dst["presets"] if (k := key(r, dst_roles))}
    dst_by_id = {str(r["id"]): r for r in dst["presets"]}
    for row in src["presets"]:
        k = key(row, src_roles)
        if k is None:
            continue
        label = f"{k[0]} {k[1] + ' ' if k[1] else ''}{k[2]}"
        presets.match(label, row["id"], {f: row.get(f) for f in PRESET_FIELDS} | {"_role": k[1] or None},
                      dst_by_id, dst_index, k)
    return presets


def _plan_settings(src: dict[str, Any], dst: dict[str, Any], idmap: IdMap, exclude: tuple[str, ...] = ()) -> Kind:
    """The singleton's non-secret fields but ``exclude``; a source without a settings row has nothing to promote."""
    settings = Kind("settings", idmap)
    if not src["settings"]:
        return settings
    for name in SETTINGS_FIELDS:
        if name in exclude:
            continue
        wanted, current = src["settings"].get(name), dst["settings"].get(name)
        step = {"label": name, "source_id": name, "values": {name: wanted}, "target_id": "settings"}
        if _norm(wanted) == _norm(current):
            settings.unchanged.append(name)
        else:
            settings.update.append(step | {"fields": [name]})
    return settings


def _plan_translations(src: dict[str, Any], dst: dict[str, Any], idmap: IdMap) -> Kind:
    """``translation_strings`` merged by key: the source's keys created or updated, the target's others kept."""
    kind = Kind("translations", idmap)
    theirs = {t["key"]: t for t in dst["settings"].get("translation_strings") or [] if isinstance(t, Mapping)}
    for entry in src["settings"].get("translation_strings") or []:
        step = {"label": entry["key"], "source_id": entry["key"], "values": entry}
        if entry["key"] not in theirs:
            kind.create.append(step)
        elif _norm(entry) != _norm(theirs[entry["key"]]):
            kind.update.append(step | {"fields": ["translations"]})
        else:
            kind.unchanged.append(entry["key"])
    return kind


def _plan_target_only(dst: dict[str, Any], kinds: Mapping[str, Kind], destructive: bool) -> None:
    """The target's flows, operations (of kept flows), dashboards, panels (of kept dashboards), role and global
    presets and translation strings that no source row matched.  User presets and bookmarks are never touched."""
    def unmatched(kind: Kind, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        matched = {str(v) for v in kind.matched.values()}
        return [r for r in rows if str(r["id"]) not in matched]

    if "flows" in kinds:
        gone = set()
        for flow in unmatched(kinds["flows"], dst["flows"]):
            kinds["flows"].target_only(f"{flow['name']} ({flow.get('trigger')})", flow["id"], destructive)
            gone.add(flow["id"])
        names = {r["id"]: r["name"] for r in dst["flows"]}
        for op in unmatched(kinds["operations"], dst["operations"]):
            if op["flow"] not in gone:
                kinds["operations"].target_only(f"{names.get(op['flow'], '?')}/{op['key']}", op["id"], destructive)
    if "dashboards" in kinds:
        gone = set()
        for dashboard in unmatched(kinds["dashboards"], dst["dashboards"]):
            kinds["dashboards"].target_only(dashboard["name"], dashboard["id"], destructive)
            gone.add(dashboard["id"])
        names = {r["id"]: r["name"] for r in dst["dashboards"]}
        for panel in unmatched(kinds["panels"], dst["panels"]):
            if panel["dashboard"] not in gone:
                kinds["panels"].target_only("/".join(_panel_key(names.get(panel["dashboard"], ""), panel)), panel["id"],
                                            destructive)
    if "presets" in kinds:
        roles = {r["id"]: r.get("key") for r in dst["roles"]}
        for preset in unmatched(kinds["presets"], dst["presets"]):
            if preset.get("user") or preset.get("bookmark"):
                continue
            label = (f"role {roles.get(preset['role'], '?')} {preset['collection']}" if preset.get("role")
                     else f"global {preset['collection']}")
            kinds["presets"].target_only(label, preset["id"], destructive)
    if "translations" in kinds:
        kind = kinds["translations"]
        ours = {s["label"] for s in kind.create + kind.update} | set(kind.unchanged)
        for entry in dst["settings"].get("translation_strings") or []:
            if isinstance(entry, Mapping) and entry.get("key") not in ours:
                kind.target_only(entry["key"], entry["key"], destructive)


def has_changes(kinds: Mapping[str, Kind]) -> bool:
    return any(k.create or k.update or k.delete for k in kinds.values())


# --------------------------------------------------------------------------- writers
#: The table of each kind a writer writes (``directus_<kind>``; the API path is ``/<kind>``).
WRITTEN_KINDS = ("flows", "operations", "dashboards", "panels", "presets")
#: Kinds whose primary key is a uuid the writer makes (presets' is serial).
UUID_KINDS = {"flows", "operations", "dashboards", "panels"}


class ApiWriter:
    """The extras written through a running target's items API (``/flows``, ``/operations``, ...)."""

    def __init__(self, remote: Any) -> None:
        self.remote = remote
        self.described = remote.url

    def rows(self) -> dict[str, Any]:
        return rows_of_remote(self.remote)

    def role_ids(self) -> dict[str, str]:
        return {r.get("key"): r["id"] for r in self.remote.data("/roles?limit=-1")}

    def create(self, kind: str, values: Mapping[str, Any]) -> Any:
        return self.remote.call("POST", f"/{kind}", json=dict(values)).json()["data"]["id"]

    def update(self, kind: str, target_id: Any, values: Mapping[str, Any]) -> None:
        self.remote.call("PATCH", f"/{kind}/{target_id}", json=dict(values))

    def delete(self, kind: str, ids: list[Any]) -> None:
        if ids:
            self.remote.call("DELETE", f"/{kind}", json=list(ids), ok=(200, 204))

    def patch_settings(self, values: Mapping[str, Any]) -> None:
        self.remote.call("PATCH", "/settings", json=dict(values))

    def finish(self) -> None:
        """Nothing to do: every call above is its own write."""


class DbWriter:
    """The extras written as rows into the target's database, as CairnCMS's items services write them.

    New rows get new uuids (presets their serial id), JSON columns are written as JSON text, ``date_created``
    as CairnCMS stamps it (milliseconds since the epoch on SQLite, a UTC timestamp elsewhere), ``user_created``
    null (no user wrote them).  CairnCMS reads flows at start (and on its own writes), so a running target
    serves rows written here only after a restart.
    """

    def __init__(self, db: Any) -> None:
        self.db = db
        self.vendor = db.engine.dialect.name  # sqlite, postgresql, mysql/mariadb
        self.described = str(db.engine.url.render_as_string(hide_password=True))

    def rows(self) -> dict[str, Any]:
        return rows_of_database(self.db)

    def _encoded(self, values: Mapping[str, Any]) -> dict[str, Any]:
        return {k: (json.dumps(v, separators=(",", ":")) if k in JSON_COLUMNS and v is not None else v)
                for k, v in values.items()}

    def _now(self) -> Any:
        now = dt.datetime.now(dt.timezone.utc)
        if self.vendor == "sqlite":
            return int(now.timestamp() * 1000)
        return now if self.vendor == "postgresql" else now.replace(tzinfo=None, microsecond=0)

    def role_ids(self) -> dict[str, str]:
        with self.db.engine.connect() as conn:
            key = conn.dialect.identifier_preparer.quote("key")
            return {str(r.role_key): str(r.id) for r in conn.execute(sa.text(
                f"SELECT {key} AS role_key, id FROM directus_roles"))}

    def create(self, kind: str, values: Mapping[str, Any]) -> Any:
        from .config_rows import insert_row

        row = self._encoded(values)
        with self.db.engine.begin() as conn:
            if kind == "presets":
                return insert_row(conn, "directus_presets", row, returning="id")
            row = {"id": str(uuid.uuid4()), **row, "date_created": self._now(), "user_created": None}
            insert_row(conn, f"directus_{kind}", row)
            return row["id"]

    def update(self, kind: str, target_id: Any, values: Mapping[str, Any]) -> None:
        from .config_rows import update_rows

        with self.db.engine.begin() as conn:
            update_rows(conn, f"directus_{kind}", self._encoded(values), {"id": target_id})

    def delete(self, kind: str, ids: list[Any]) -> None:
        from .config_rows import delete_rows, update_rows

        if ids:
            with self.db.engine.begin() as conn:
                if kind == "flows":  # as FlowsService.deleteMany: resolve/reject (NO ACTION) would stop the cascade
                    update_rows(conn, "directus_operations", {"resolve": None, "reject": None}, {"flow": list(ids)})
                delete_rows(conn, f"directus_{kind}", {"id": list(ids)})

    def patch_settings(self, values: Mapping[str, Any]) -> None:
        """The singleton: its one row updated, or (a fresh instance has none) created with these values."""
        from .config_rows import insert_row, update_rows

        row = self._encoded(values)
        with self.db.engine.begin() as conn:
            first = conn.execute(sa.text("SELECT min(id) FROM directus_settings")).scalar()
            if first is None:
                insert_row(conn, "directus_settings", row)
            else:
                update_rows(conn, "directus_settings", row, {"id": first})

    def finish(self) -> None:
        """Nothing to do: each write committed at once, like the API's."""


# --------------------------------------------------------------------------- apply
def apply_extras(writer: Any, src: dict[str, Any], dst: dict[str, Any], kinds: dict[str, Kind], idmap: IdMap,
                 phases: set[str] | None = None, begin: Callable[[str], None] = lambda phase: None,
                 done: Callable[[str], None] = lambda phase: None) -> None:
    """Write the planned creates and updates with ``writer`` (:class:`ApiWriter` or :class:`DbWriter`), recording
    every id in the ID map, then (only when planned with ``destructive``) delete what the source lacks.
    ``begin(phase)`` runs before and ``done(phase)`` after each of ``phases`` (flows, dashboards, presets,
    settings, deletes)."""
    def phase(name: str) -> bool:
        if phases is None or name in phases:
            begin(name)
            return True
        return False

    if "flows" in kinds and phase("flows"):
        _apply_flows(writer, src, dst, kinds["flows"], kinds["operations"], idmap)
        done("flows")
    if "dashboards" in kinds and phase("dashboards"):
        _apply_rows(writer, "dashboards", kinds["dashboards"], idmap)
        for step in kinds["panels"].create + kinds["panels"].update:
            step["values"]["dashboard"] = idmap.get("dashboards", step["values"].pop("_dashboard"))
        _apply_rows(writer, "panels", kinds["panels"], idmap)
        done("dashboards")
    if "presets" in kinds and phase("presets"):
        role_ids = writer.role_ids()  # config may have added some
        for step in kinds["presets"].create + kinds["presets"].update:
            role = step["values"].pop("_role")
            if role and role not in role_ids:
                raise InvalidInput(f"The preset {step['label']} is for the role {role}, which the target lacks",
                                   hint="promote the config too (--only config), or create that role on the target")
            step["values"]["role"] = role_ids.get(role) if role else None
        _apply_rows(writer, "presets", kinds["presets"], idmap)
        done("presets")
    patch: dict[str, Any] = {}
    if "settings" in kinds:
        for step in kinds["settings"].update:
            patch.update(step["values"])
    translations = kinds.get("translations")
    if translations is not None and (translations.create or translations.update or translations.delete):
        merged = {t["key"]: t for t in dst["settings"].get("translation_strings") or []}
        for step in translations.create + translations.update:
            merged[step["label"]] = step["values"]
        for step in translations.delete:
            merged.pop(step["label"], None)
        patch["translation_strings"] = list(merged.values())
    if patch and phase("settings"):
        writer.patch_settings(patch)
        done("settings")
    if phases is None or "deletes" in phases:
        begin("deletes")
        _apply_deletes(writer, kinds)
        done("deletes")
    writer.finish()


def _apply_deletes(writer: Any, kinds: Mapping[str, Kind]) -> None:
    """The target-only rows a destructive plan deletes: operations (links cleared first), flows (with their
    operations), panels, dashboards (with their panels), presets."""
    if "operations" in kinds and kinds["operations"].delete:
        ids = [step["target_id"] for step in kinds["operations"].delete]
        for target_id in ids:  # resolve/reject point at each other (NO ACTION): unlinked before the delete
            writer.update("operations", target_id, {"resolve": None, "reject": None})
        writer.delete("operations", ids)
    for kind in ("flows", "panels", "dashboards", "presets"):
        if kind in kinds and kinds[kind].delete:
            writer.delete(kind, [step["target_id"] for step in kinds[kind].delete])


def _apply_rows(writer: Any, name: str, kind: Kind, idmap: IdMap) -> None:
    for source_id, target_id in kind.matched.items():
        idmap.put(kind.name, source_id, target_id)
    for step in kind.create:
        values = {k: v for k, v in step["values"].items() if not k.startswith("_")}
        idmap.put(kind.name, step["source_id"], writer.create(name, values))
    for step in kind.update:
        values = {k: v for k, v in step["values"].items() if not k.startswith("_")}
        if values:  # a link-only update (flow.operation, resolve/reject) is written after the rows
            writer.update(name, step["target_id"], values)
        idmap.put(kind.name, step["source_id"], step["target_id"])


def _apply_flows(writer: Any, src: dict[str, Any], dst: dict[str, Any], flows: Kind, operations: Kind,
                 idmap: IdMap) -> None:
    """Flows first (without their first operation), then operations (without links), then the links remapped."""
    _apply_rows(writer, "flows", flows, idmap)
    dst_ops = {r["id"]: r for r in dst["operations"]}
    src_ops = {r["id"]: r for r in src["operations"]}
    for step in operations.create + operations.update:
        if not step["values"]:
            continue
        step["values"]["flow"] = idmap.get("flows", src_ops[step["source_id"]]["flow"])
        if "target_id" in step:
            step["values"]["options"] = _with_target_secrets(step["values"]["options"],
                                                             dst_ops[step["target_id"]].get("options"))
    _apply_rows(writer, "operations", operations, idmap)
    relink = {}
    for op in src["operations"]:
        target_id = idmap.get("operations", op["id"])
        links = {k: idmap.get("operations", op[k]) if op.get(k) else None for k in ("resolve", "reject")}
        if any((dst_ops.get(target_id) or {}).get(k) != v for k, v in links.items()):
            relink[target_id] = links
    for target_id in relink:  # cleared first: resolve/reject are unique, a link moved must not collide
        writer.update("operations", target_id, {"resolve": None, "reject": None})
    for target_id, links in relink.items():
        writer.update("operations", target_id, links)
    dst_flows = {r["id"]: r for r in dst["flows"]}
    for flow in src["flows"]:
        target_id = idmap.get("flows", flow["id"])
        first = idmap.get("operations", flow["operation"]) if flow.get("operation") else None
        if (dst_flows.get(target_id) or {}).get("operation") != first:
            writer.update("flows", target_id, {"operation": first})


# --------------------------------------------------------------------------- the hooks promote calls
@dataclass
class ExtrasPlan:
    """What :func:`prepare` planned, kept for :func:`apply_plan` (the rows it was made of and the ID map)."""

    src: dict[str, Any]
    dst: dict[str, Any]
    kinds: dict[str, Kind]
    idmap: IdMap
    writer: Any = None


def scope_of(ctx: Any, value: str, name: str) -> str:
    """Who a source or target is in the ID map, however it is named: a URL by its canonical origin; a ``.env`` by
    its ``PUBLIC_URL``'s canonical origin when it sets an absolute one (so the URL and the ``.env`` of one
    instance are one identity), else by its database (``instance_scope``)."""
    from .promote import is_url

    if is_url(value):
        return url_scope(value)
    from ..instance.instance import Instance
    from ..service.state import instance_scope

    instance = Instance.from_env_file(ctx.path(name, value))
    public = getattr(instance, "public_url", None)
    return url_scope(public) if isinstance(public, str) and is_url(public) else instance_scope(instance)


def legacy_scopes(ctx: Any, value: str, name: str) -> list[str]:
    """The identities older versions gave this source or target (the URL as written; a ``.env``'s database)."""
    from .promote import is_url

    if is_url(value):
        return [legacy_url_scope(value)]
    from ..instance.instance import Instance
    from ..service.state import instance_scope

    try:
        return [instance_scope(Instance.from_env_file(ctx.path(name, value)))]
    except Exception:  # noqa: BLE001 - only a migration hint: the .env was read already
        return []


def source_rows(ctx: Any, value: str, token: str | None) -> dict[str, Any] | None:
    """The extras of the source: a running instance (API) or an ``.env`` (database); None for snapshot folders."""
    from .promote import Remote, is_url

    if is_url(value):
        return rows_of_remote(Remote(value, token or "", "source"))
    path = ctx.path("from", value)
    if not path.is_file():
        return None
    from ..instance.database import Database
    from ..instance.instance import Instance

    with Database.open(Instance.from_env_file(path)) as db:
        return rows_of_database(db)


def prepare(ctx: Any, p: Mapping[str, Any], writer: Any, kinds: list[str],
            bundle: Any = None) -> tuple[dict[str, Any], ExtrasPlan | None]:
    """The extras' part of the plan (``report["extras"]``) and what apply needs; ``writer`` is the target
    (:class:`ApiWriter` or :class:`DbWriter`), ``bundle`` a bundle source's ``BundleSource`` (its rows)."""
    if bundle is not None:
        src, source_scope = bundle.rows, bundle.scope
        if src is None:
            return {"changes": False, "skipped": f"extras are not available from this source: {bundle.rows_missing}"}, None
    else:
        src = source_rows(ctx, p["from_"], ctx.secret("from_token") or p.get("from_token"))
        if src is None:
            return {"changes": False, "skipped": "not available from a snapshot folder (flows, dashboards, presets, "
                    "settings, translations): name the source by its URL, .env or bundle to promote them"}, None
        source_scope = scope_of(ctx, p["from_"], "from")
    dst = writer.rows()
    target_scope = scope_of(ctx, p["to"], "to")
    old_sources = ([bundle.legacy_scope] if bundle.legacy_scope else []) if bundle is not None else \
        legacy_scopes(ctx, p["from_"], "from")
    legacy = [(s, t) for s in [source_scope, *old_sources] for t in [target_scope, *legacy_scopes(ctx, p["to"], "to")]]
    idmap = IdMap(ctx.state_url, (source_scope, target_scope), legacy)
    exclude = tuple(p.get("exclude_settings") or ())
    unknown = [name for name in exclude if name not in SETTINGS_FIELDS]
    if unknown:
        raise InvalidInput(f"exclude_settings names settings promote does not copy: {', '.join(unknown)}",
                           hint=f"name one of: {', '.join(SETTINGS_FIELDS)}")
    report, planned = plan_extras(src, dst, kinds, idmap, bool(p.get("include_secrets")), bool(p.get("destructive")),
                                  exclude)
    return {"changes": has_changes(planned), **report}, ExtrasPlan(src, dst, planned, idmap, writer)


def apply_phases(planned: ExtrasPlan) -> list[str]:
    """The write phases :func:`apply_plan` goes through, in order (each a kind with something to write)."""
    kinds = planned.kinds

    def writes(*names: str) -> bool:
        return any(name in kinds and (kinds[name].create or kinds[name].update) for name in names)

    phases = [name for name, parts in (("flows", ("flows", "operations")), ("dashboards", ("dashboards", "panels")),
                                       ("presets", ("presets",)), ("settings", ("settings", "translations")))
              if writes(*parts)]
    if "translations" in kinds and kinds["translations"].delete and "settings" not in phases:
        phases.append("settings")
    if any(kind.delete for name, kind in kinds.items() if name != "translations"):
        phases.append("deletes")
    return phases


def apply_plan(planned: ExtrasPlan, begin: Callable[[str], None] | None = None,
               done: Callable[[str], None] | None = None) -> None:
    """Apply the plan, phase by phase (:func:`apply_phases`), ``begin``/``done`` called around each one (a
    cancellation check, the progress)."""
    apply_extras(planned.writer, planned.src, planned.dst, planned.kinds, planned.idmap,
                 set(apply_phases(planned)), begin or (lambda phase: None), done or (lambda phase: None))
