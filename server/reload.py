"""Swap the versions `make repo` wrote into a running server, through Triton's restricted model-control API.

    python -m server.serve reload [--model M ...]     # make reload [MODEL=M]

For each model (default: every model the server has loaded) it asks Triton, over gRPC, to load it again with the
admin key (from the server's state folder; see server.access). Triton reads the model directory again and loads the
versions its `version_policy` names (the latest N) while the ones already loaded keep serving; a request names no
version, so Triton answers it with the highest version that is ready: requests in flight finish on the old
version, new ones go to the new version as soon as it is ready. A new version that fails to load leaves the old
ones loaded and serving (Triton 2.51 keeps the previous version set when a load fails; tests/integration/
test_updates.py checks it): the command then names the version, Triton's reason and the version still serving,
in one line, and exits 2. Servers start without strict readiness (server.serve): in Triton 2.51 such a failed
load would otherwise turn the server's readiness off until a restart, though the old version serves on.
"""
from __future__ import annotations

from pathlib import Path

from server.access import GRPC_ADMIN_HEADER
from server.state import STATE, ServerError, describe, running


class ReloadError(ServerError):
    """A model did not take its new version (the old one keeps serving), or no server to reload: one line, exit 2."""


class _Admin:
    """Triton's model-control API over gRPC. (Not HTTP: Triton's HTTP server answers a load in the thread that
    owns the connection, and the inference requests of the clients on that thread's other connections wait
    for the whole load, seconds; the gRPC server does not hold up inference while it loads.)"""

    def __init__(self, url: str, key: str, timeout: float):
        import tritonclient.grpc as tg

        self.client, self.headers, self.timeout = tg.InferenceServerClient(url), {GRPC_ADMIN_HEADER: key}, timeout

    def index(self) -> list[dict]:
        return self.client.get_model_repository_index(headers=self.headers, as_json=True,
                                                      client_timeout=60).get("models", [])

    def load(self, model: str) -> None:
        self.client.load_model(model, headers=self.headers, client_timeout=self.timeout)

    def close(self) -> None:
        self.client.close()


def versions(admin: _Admin) -> dict[str, dict[str, tuple[str, str]]]:
    """{model: {version: (state, reason)}} from Triton's repository index (a restricted API: needs the key)."""
    out: dict[str, dict[str, tuple[str, str]]] = {}
    for m in admin.index():
        if m.get("version"):
            out.setdefault(m["name"], {})[m["version"]] = (m.get("state", ""), m.get("reason", ""))
        else:
            out.setdefault(m["name"], {})
    return out


def ready(states: dict[str, tuple[str, str]]) -> list[int]:
    return sorted(int(v) for v, (s, _) in states.items() if s == "READY")


def on_disk(repo: Path | None, model: str) -> list[int]:
    d = repo / model if repo else None
    if d is None or not d.is_dir():
        return []
    return sorted(int(p.name) for p in d.iterdir() if p.is_dir() and p.name.isdigit())


def reload_model(url: str, key: str, model: str, repo: Path | None = None, timeout: float = 600.0) -> dict:
    """Load `model` again on the server whose gRPC endpoint is `url`; returns {model, before, after, serving}.
    ReloadError when the newest version on disk is not ready afterwards, naming Triton's reason and what keeps
    serving."""
    client = _Admin(url, key, timeout)
    try:
        before = ready(versions(client).get(model, {}))
        failure = None
        try:
            client.load(model)
        except Exception as exc:  # noqa: BLE001 - tritonclient's InferenceServerException and transport errors
            failure = str(exc).strip()
        index = versions(client)
    except Exception as exc:  # noqa: BLE001 - the server went away, or the key is not this server's
        raise ReloadError(f"{model}: the server at {url} did not answer the model-control API ({_line(exc)})") \
            from None
    finally:
        client.close()
    if model not in index:
        where = f" ({repo})" if repo else ""
        raise ReloadError(f"{model} is not in the server's model repository{where}: build it with "
                          f"`make repo VARIANTS={model}`, or name a served model")
    states = index[model]
    after, disk = ready(states), on_disk(repo, model)
    newest = disk[-1] if disk else None
    if failure is None and (newest is None or newest in after) and after:
        return {"model": model, "before": before, "after": after, "serving": after[-1]}
    failed = next((int(v) for v, (s, why) in sorted(states.items(), key=lambda x: -int(x[0]))
                   if s != "READY" and why), newest)
    why = states.get(str(failed), ("", ""))[1] or _reason(failure) or "not ready after the load"
    keeps = f"version {after[-1]} keeps serving" if after else "no version of it is serving"
    what = f"version {failed}" if failed else "its new version"
    where = repo / model / str(failed) if repo and failed else "the new version"
    raise ReloadError(f"{model}: {what} did not load ({_line(why)}); {keeps}; fix or remove {where} and reload again")


def _line(text) -> str:
    s = str(text).strip()
    return s.splitlines()[0].rstrip(";") if s else type(text).__name__


def _reason(failure: str | None) -> str:
    """Triton's load error without the request wrapper ("[400] load failed for model 'x': ...")."""
    if not failure:
        return ""
    return failure.split(": ", 1)[1] if failure.startswith("[") and ": " in failure else failure


def server_of(state: Path = STATE) -> tuple[str, str, Path | None]:
    """(gRPC address, admin key, model repository) of the server recorded in `state`; ReloadError when none runs."""
    rec = running(state / "server.pid")
    if rec is None:
        raise ReloadError(f"no Triton running (state {state}): start it with `make serve`")
    try:
        key = (state / "admin-key").read_text().strip()
    except OSError:
        raise ReloadError(f"{state / 'admin-key'} is missing: the server ({describe(rec)}) cannot be reloaded "
                          "without its admin key; restart it (`make stop serve`)") from None
    host = rec.get("host", "127.0.0.1")
    host = "127.0.0.1" if host in ("0.0.0.0", "localhost") else host
    if "grpc" not in rec:
        raise ReloadError(f"the server's record {state / 'server.pid'} names no gRPC port: restart it")
    return f"{host}:{rec['grpc']}", key, Path(rec["repo"]) if rec.get("repo") else None


def reload_server(state: Path = STATE, models: list[str] | None = None, timeout: float = 600.0,
                  log=print) -> list[dict]:
    """Reload `models` (default: every model the server has loaded) on the server recorded in `state`, one line
    each; ReloadError naming every model that kept its old version (the others are swapped)."""
    url, key, repo = server_of(state)
    models = [x for m in models or () for x in m.split(",") if x]
    if not models:
        try:
            c = _Admin(url, key, timeout)
            try:
                models = sorted(m for m, s in versions(c).items() if ready(s))
            finally:
                c.close()
        except Exception as exc:  # noqa: BLE001
            raise ReloadError(f"the server at {url} did not list its models ({_line(exc)})") from None
        if not models:
            raise ReloadError(f"the server at {url} has no model loaded: name one with MODEL=")
    done, errors = [], []
    for m in models:
        try:
            r = reload_model(url, key, m, repo, timeout)
        except ReloadError as exc:
            errors.append(str(exc))
            continue
        done.append(r)
        log(describe_reload(r))
    if errors:
        raise ReloadError("; ".join(errors) if len(errors) > 1 else errors[0])
    return done


def describe_reload(r: dict) -> str:
    was = r["before"][-1] if r["before"] else None
    if was == r["serving"]:
        return f"{r['model']}: version {r['serving']} serving (unchanged)"
    loaded = ", ".join(map(str, r["after"]))
    return (f"{r['model']}: version {r['serving']} serving" + (f" (was {was})" if was else " (newly loaded)")
            + f"; loaded versions {loaded}")
