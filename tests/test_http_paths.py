"""An instance's admin never reaches the sidecar host's files (issue 9): HTTP paths only where the operator allows.

Every request field that names a path on the sidecar's machine is found in the
OpenAPI document built from the app's url_map (``x-server-path``), so a new
route or field is covered without editing these tests; a new string field
that is neither a path field nor known here fails ``test_every_request_field_is_classified``.
The sidecar runs on a real CairnCMS SQLite instance, with real exported bundles.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from instance_fixtures import (  # noqa: F401 - fixtures
    CairnSqliteInstance,
    admin_token,
    bearer,
    cairn_instance,
    state_url,
)

from cairn_migrate.service.app import HTTP_PATHS, create_app, get_state
from cairn_migrate.errors import ConfigError
from cairn_migrate.operations.export import export_bundle
from cairn_migrate.instance.instance import Instance
from cairn_migrate.service.openapi import build_spec

#: Request fields (body or query) that carry no path on the sidecar's machine, and what they are instead.
NOT_PATHS = {
    "bundle": "a server-side bundle id",
    "safety_bundle": "a bundle name, written into the instance's own bundle folder",
    "passphrase": "a secret", "token": "a secret", "url": "the instance's URL", "instance_url": "the instance's URL",
    "reason": "free text", "state": "a job state", "kind": "a job kind", "version": "a migration version",
    "orphans": "an action", "layout": "a layout", "from": "a storage location", "to": "a storage location",
    "from_locations": "storage locations", "filters": "KEY=GLOB filters", "storage_map": "storage location names",
    "op": "an operation's name (its parameters are checked by test_every_host_path_parameter_of_an_operation_…)",
    "name": "a sync profile's name", "collections": "collection names",
    "target_token_env": "the name of an environment variable", "alert_webhook": "a URL",
    "event": "an instance event's name", "at": "a timestamp", "collection": "a collection name",
    "user": "a user id",
}


def base_body(method: str, route: str, allowed: Path) -> dict[str, Any]:
    """The rest of a valid body of the routes that refuse a body holding only the path field."""
    if (method, route) == ("POST", "/migrate/syncs"):
        for name in ("source.env", "target.env"):  # there (a missing .env is named at once, 422): judged as peers
            (allowed / name).touch()
        return {"name": "paths", "source": str(allowed / "source.env"), "target": str(allowed / "target.env"),
                "collections": ["articles"]}
    return {}


def request_fields(app: Any) -> dict[tuple[str, str], dict[str, dict[str, Any]]]:
    """(method, route) → {field: OpenAPI property} of every request body and query string under /migrate."""
    spec = build_spec(app).to_dict()
    schemas = spec["components"]["schemas"]
    found: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if method == "parameters":
                continue
            props: dict[str, dict[str, Any]] = {}
            for media in operation.get("requestBody", {}).get("content", {}).values():
                props.update(schemas[media["schema"]["$ref"].rsplit("/", 1)[-1]]["properties"])
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "query":
                    props[parameter["name"]] = {**parameter.get("schema", {}), **parameter}
            found[(method.upper(), path)] = props
    return found


def _carries_text(prop: dict[str, Any]) -> bool:
    """A string, or a list or map of strings: anything that could hold a path."""
    kinds = {prop.get("type"), (prop.get("items") or {}).get("type"),
             (prop.get("additionalProperties") or {}).get("type")}
    return "string" in kinds and "enum" not in prop


def server_path_fields(app: Any) -> list[tuple[str, str, str]]:
    return sorted((method, route, name) for (method, route), props in request_fields(app).items()
                  for name, prop in props.items() if prop.get("x-server-path"))


@pytest.fixture
def allowed(tmp_path: Path) -> Path:
    folder = tmp_path / "allowed"
    folder.mkdir()
    return folder


@pytest.fixture
def sidecar(cairn_instance: CairnSqliteInstance, state_url: str, allowed: Path) -> Iterator[Any]:
    """The sidecar on the instance; its operator allows HTTP callers the folder ``allowed`` only."""
    app = create_app({"TESTING": True, "CAIRN_MIGRATE_ENV": str(cairn_instance.env_path),
                      "CAIRN_MIGRATE_STATE_URL": state_url, "CAIRN_MIGRATE_SCHEDULER": False,
                      HTTP_PATHS: str(allowed)})
    yield app
    get_state(app).close()


@pytest.fixture
def bundles(cairn_instance: CairnSqliteInstance, tmp_path: Path, allowed: Path) -> dict[str, Path]:
    """A real bundle of the instance outside the allowed folder, one inside, and a link inside to the outside one."""
    outside = tmp_path / "elsewhere" / "bundle"
    export_bundle(Instance.from_env_file(cairn_instance.env_path, environ={}), outside)
    inside = Path(shutil.copytree(outside, allowed / "bundle"))  # a copy, not a link: its real path is inside
    os.symlink(outside, allowed / "link")
    return {"outside": outside, "inside": inside, "link": allowed / "link"}


def test_every_request_field_is_classified(sidecar: Any) -> None:
    """A field naming a file or folder must be a ServerPath (x-server-path); every other one is known here."""
    unknown = sorted((method, route, name) for (method, route), props in request_fields(sidecar).items()
                     for name, prop in props.items()
                     if _carries_text(prop) and not prop.get("x-server-path") and name not in NOT_PATHS)
    assert not unknown, ("classify these request fields: a path on the sidecar's machine is a ServerPath "
                         f"(endpoints/schemas.py), anything else goes into NOT_PATHS: {unknown}")
    assert server_path_fields(sidecar) == [("PATCH", "/migrate/syncs/{sync_name}", "source"),
                                           ("PATCH", "/migrate/syncs/{sync_name}", "target"),
                                           ("POST", "/migrate/files/repair", "path"),
                                           ("POST", "/migrate/import", "path"),
                                           ("POST", "/migrate/syncs", "source"), ("POST", "/migrate/syncs", "target"),
                                           ("POST", "/migrate/verify", "path")]


def test_every_request_schema_is_in_the_openapi_document(sidecar: Any) -> None:
    """The enumeration above sees every request body: no ``*RequestSchema`` of a view is left undocumented."""
    import marshmallow

    def subclasses(cls: type) -> set[type]:
        return {sub for direct in cls.__subclasses__() for sub in {direct, *subclasses(direct)}}

    spec = build_spec(sidecar).to_dict()
    documented = {media["schema"]["$ref"].rsplit("/", 1)[-1] for operations in spec["paths"].values()
                  for method, operation in operations.items() if method != "parameters"
                  for media in operation.get("requestBody", {}).get("content", {}).values()}
    defined = {cls.__name__ for cls in subclasses(marshmallow.Schema)
               if cls.__module__.startswith("cairn_migrate.endpoints") and cls.__name__.endswith("RequestSchema")}
    assert defined and defined <= documented, f"request schemas no route documents: {sorted(defined - documented)}"


def test_every_path_field_is_refused_outside_the_allowed_folders(sidecar: Any, admin_token: str,
                                                                 bundles: dict[str, Path], allowed: Path) -> None:
    client, headers = sidecar.test_client(), bearer(admin_token)
    path_fields = server_path_fields(sidecar)
    assert path_fields, "the OpenAPI document marks no request field x-server-path"
    for method, route, field in path_fields:
        for case in ("outside", "link"):  # a symlink inside the allowed folder is judged by where it points
            value = str(bundles[case])
            response = client.open(route, method=method, json={**base_body(method, route, allowed), field: value},
                                   headers=headers)
            assert response.status_code == 422, (route, field, case, response.get_json())
            error = response.get_json()["error"]
            assert error["code"] == "invalid_input"
            assert error["message"] == (f"'{field}' {value} is outside the folders the sidecar's operator allows "
                                        f"HTTP callers to name ({HTTP_PATHS})")
            assert HTTP_PATHS in error["hint"]
            # from/to name an instance (promote rejects 'bundle'); the others may name a server-side bundle instead
            assert ("'bundle'" in error["hint"]) == (field not in ("from", "to")), (field, error["hint"])
            assert error["details"] == {"field": field, "path": value, "setting": HTTP_PATHS}
        response = client.open(route, method=method, json={**base_body(method, route, allowed),
                                                           field: str(bundles["inside"])}, headers=headers)
        assert response.status_code != 422, (route, field, response.get_json())
        if (method, route) == ("POST", "/migrate/syncs"):
            # the paths are allowed; then neither side is the sidecar's own instance: 403 (test_confine_http.py)
            assert response.status_code == 403, response.get_json()
    for job in get_state(sidecar).store.list():  # the allowed paths' jobs only (nothing outside was started)
        get_state(sidecar).runner.wait(job["id"], timeout=120)
        assert job["params"]["path"] == str(bundles["inside"]), job["params"]


def test_by_default_no_path_is_allowed(cairn_instance: CairnSqliteInstance, state_url: str, admin_token: str,
                                       bundles: dict[str, Path]) -> None:
    """Without CAIRN_MIGRATE_HTTP_PATHS an HTTP caller uses bundle ids and uploads only; the CLI is not limited."""
    from click.testing import CliRunner

    from cairn_migrate.cli import cli

    app = create_app({"TESTING": True, "CAIRN_MIGRATE_ENV": str(cairn_instance.env_path),
                      "CAIRN_MIGRATE_STATE_URL": state_url, "CAIRN_MIGRATE_SCHEDULER": False})
    try:
        assert get_state(app).http_paths == []
        response = app.test_client().post("/migrate/verify", json={"path": str(bundles["inside"])},
                                          headers=bearer(admin_token))
        assert response.status_code == 422 and response.get_json()["error"]["details"]["setting"] == HTTP_PATHS
        assert get_state(app).store.list() == []
    finally:
        get_state(app).close()
    result = CliRunner().invoke(cli, ["--env", str(cairn_instance.env_path), "verify", str(bundles["outside"])])
    assert result.exit_code == 0, result.output


def test_an_allowed_path_is_used_resolved(sidecar: Any, admin_token: str, bundles: dict[str, Path],
                                          allowed: Path) -> None:
    """A path with ``..`` and links inside the allowed folder works; the job gets the resolved path it was judged by."""
    (allowed / "sub").mkdir()
    os.symlink(bundles["inside"], allowed / "sub" / "again")
    asked = str(allowed / "sub" / ".." / "sub" / "again")
    client, headers = sidecar.test_client(), bearer(admin_token)
    plan = client.post("/migrate/import", json={"path": asked, "dry_run": True, "replace": True}, headers=headers)
    assert plan.status_code == 200, plan.get_json()
    assert plan.get_json()["applied"] is False and plan.get_json()["plan"]["changes"] is True
    started = client.post("/migrate/verify", json={"path": asked}, headers=headers)
    assert started.status_code == 202, started.get_json()
    job = get_state(sidecar).runner.wait(started.get_json()["id"], timeout=120)
    assert job["params"]["path"] == str(bundles["inside"])
    assert job["state"] == "succeeded" and job["result"]["ok"] is True, job


def test_the_job_checks_the_path_again_when_it_runs(sidecar: Any, bundles: dict[str, Path]) -> None:
    """A job's recorded path is judged again when it runs (the route's check is not the only one)."""
    state = get_state(sidecar)
    job = state.runner.wait(state.runner.submit("verify", {"path": str(bundles["outside"])}), timeout=60)
    assert job["state"] == "failed" and job["error"]["code"] == "invalid_input", job
    assert HTTP_PATHS in job["error"]["message"]


def test_multipart_fields_are_checked_too(sidecar: Any, admin_token: str, bundles: dict[str, Path]) -> None:
    import io

    form = {"bundle": (io.BytesIO(b"never read"), "b.tar.gz"), "path": str(bundles["outside"]), "dry_run": "true"}
    response = sidecar.test_client().post("/migrate/import", data=form, headers=bearer(admin_token),
                                          content_type="multipart/form-data")
    assert response.status_code == 422 and response.get_json()["error"]["details"]["field"] == "path"
    assert list(get_state(sidecar).bundle_dir.iterdir()) == []  # refused before the upload was saved


@pytest.mark.parametrize("value", ["relative/folder", f"/srv/bundles{os.pathsep}elsewhere"])
def test_a_relative_allowed_folder_is_a_config_error_at_start(value: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        create_app({"TESTING": True, "CAIRN_MIGRATE_STATE_URL": f"sqlite:///{tmp_path / 'state.db'}",
                    HTTP_PATHS: value})
    assert info.value.message.startswith(f"{HTTP_PATHS} names ") and "not an absolute folder" in info.value.message


def _host_path_params() -> list[tuple[str, str]]:
    """(operation, parameter) for every parameter an operation's schema marks as a path on the host."""
    from cairn_migrate import operations

    return sorted((op.name, name) for op in operations.all_operations() if op.http
                  for name, schema_field in op.schema().fields.items() if schema_field.metadata.get("host_path"))


def test_every_host_path_parameter_of_an_operation_is_refused_outside_the_allowed_folders(
        sidecar: Any, admin_token: str, bundles: dict[str, Path], tmp_path: Path) -> None:
    """``POST /migrate/ops`` takes any operation's parameters: each host path among them meets the same rule."""
    client, headers = sidecar.test_client(), bearer(admin_token)
    params = _host_path_params()
    assert ("export", "output") in params and ("files_repair", "from_env") in params, params
    inside = str(bundles["inside"])
    for op, name in params:
        base = {"path": inside} if name != "path" and op in ("import", "verify") else {}
        if op == "promote":  # the other side a URL (not a host path), so the named one is what is refused
            base = {"to" if name == "from_" else "from": "http://127.0.0.1:9"}
        if name == "safety_bundle":
            value, base = str(tmp_path / "elsewhere" / "safety"), {**base, "replace": True}  # a path, not a name
        else:
            value = str(bundles["outside"]) if name == "path" else str(tmp_path / "elsewhere" / name)
        key = name.rstrip("_")  # the parameter as a caller names it ("from", the schema's data key)
        response = client.post("/migrate/ops", json={"op": op, "params": {**base, key: value}}, headers=headers)
        assert response.status_code == 422, (op, name, response.get_json())
        error = response.get_json()["error"]
        if op == "promote":  # the caller's name of the parameter ("from"), never its attribute ("from_")
            assert (error.get("details") or {}).get("field") == name.rstrip("_"), error
            assert error["message"].startswith(f"'{name.rstrip('_')}' "), error
    assert get_state(sidecar).store.list() == []  # no job was started


def test_the_http_reference_lists_every_host_path_parameter() -> None:
    """docs/http.md names each host path ``POST /migrate/ops`` takes, not only the alias routes' ``path``."""
    from cairn_migrate import operations
    from cairn_migrate.docgen import http_markdown

    text = http_markdown()
    for op, name in _host_path_params():
        key = operations.get(op).schema().fields[name].data_key or name
        assert f"- `{key}` of `POST /migrate/ops` `{op}`" in text, (op, key)
    assert "write or overwrite exports" in text


def test_install_extension_is_cli_only(sidecar: Any, admin_token: str, cairn_instance: CairnSqliteInstance) -> None:
    """Writing code into the instance's extensions folder is the host operator's act, not an instance admin's."""
    response = sidecar.test_client().post("/migrate/ops", json={"op": "install_extension", "params": {}},
                                          headers=bearer(admin_token))
    assert response.status_code == 422 and "CLI only" in response.get_json()["error"]["message"]
    extensions = cairn_instance.env_path.parent / "extensions"
    assert not list(extensions.glob("*/cairn-migrate"))


def test_the_allowed_folder_itself_is_refused(sidecar: Any, admin_token: str, allowed: Path) -> None:
    """A path must lie strictly inside an allowed folder: ``export`` with ``overwrite`` onto it would replace it whole."""
    (allowed / "x.txt").write_text("the operator's")
    response = sidecar.test_client().post("/migrate/ops", json={"op": "export", "params": {
        "output": str(allowed), "overwrite": True}}, headers=bearer(admin_token))
    assert response.status_code == 422, response.get_json()
    error = response.get_json()["error"]
    assert error["message"] == (f"'output' {allowed} is a folder of {HTTP_PATHS} itself; HTTP callers may name only "
                                "paths inside it")
    assert error["details"] == {"field": "output", "path": str(allowed), "setting": HTTP_PATHS}
    assert (allowed / "x.txt").read_text() == "the operator's"
    assert get_state(sidecar).store.list() == []


def test_export_overwrite_over_http_replaces_only_a_bundle(sidecar: Any, admin_token: str, allowed: Path,
                                                           bundles: dict[str, Path]) -> None:
    """``overwrite`` never deletes a folder that is not a bundle (someone else's files); it does replace a bundle."""
    client, headers, state = sidecar.test_client(), bearer(admin_token), get_state(sidecar)
    theirs = allowed / "someone-elses"
    theirs.mkdir()
    (theirs / "precious.txt").write_text("not a bundle")
    jobs = {}
    for output in (theirs, bundles["inside"]):
        started = client.post("/migrate/ops", json={"op": "export", "params": {"output": str(output), "overwrite": True}},
                              headers=headers)
        assert started.status_code == 202, started.get_json()
        jobs[output] = state.runner.wait(started.get_json()["id"], timeout=120)
    refused = jobs[theirs]
    assert refused["state"] == "failed" and refused["error"]["code"] == "config_error", refused
    assert refused["error"]["message"] == (f"{theirs} exists and is not a cairn-migrate bundle: --overwrite "
                                           "replaces only a bundle")
    assert sorted(p.name for p in theirs.iterdir()) == ["precious.txt"]
    assert jobs[bundles["inside"]]["state"] == "succeeded", jobs[bundles["inside"]]
    assert (bundles["inside"] / "manifest.json").is_file()


def test_paths_names_the_allowed_folders_and_this_instances_env_only_inside_one(
        sidecar: Any, cairn_instance: CairnSqliteInstance, state_url: str, admin_token: str, allowed: Path) -> None:
    """``GET /migrate/paths`` (the admin module's default target): the instance's .env only when an admin could name it."""
    client, headers = sidecar.test_client(), bearer(admin_token)
    assert client.get("/migrate/paths").status_code == 401
    outside = client.get("/migrate/paths", headers=headers).get_json()
    assert outside == {"allowed": [str(allowed.resolve())], "env": None, "env_outside": True}
    folder = cairn_instance.env_path.resolve().parent
    app = create_app({"TESTING": True, "CAIRN_MIGRATE_ENV": str(cairn_instance.env_path), "CAIRN_MIGRATE_STATE_URL": state_url,
                      "CAIRN_MIGRATE_SCHEDULER": False, HTTP_PATHS: f"{allowed}{os.pathsep}{folder.parent}"})
    try:
        inside = app.test_client().get("/migrate/paths", headers=headers).get_json()
        assert inside == {"allowed": [str(allowed.resolve()), str(folder.parent)],
                          "env": str(cairn_instance.env_path.resolve()), "env_outside": False}
    finally:
        get_state(app).close()
