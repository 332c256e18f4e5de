"""YAML configs: relative paths resolved against the file, repeated keys refused, `--set`
overrides, one-line errors naming the file and key; a mix's member configs."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

import yaml
from pydantic import ValidationError

from pipeline.config.run import RunConfig, is_store_url
from pipeline.errors import ConfigError


def _resolve_paths(data: Any, base: Path) -> Any:
    """Resolve relative path-valued keys against the config file's folder."""
    path_keys = {"root", "store", "frames_dir", "list_paths", "list_labels", "manifest_file",
                 "weights", "detector_weights", "detector_anchors", "init_from", "members",
                 "subjects"}
    if isinstance(data, dict):
        out = {}
        for k, v in data.items():
            if k in path_keys and isinstance(v, list):
                out[k] = [str((base / p).resolve()) if isinstance(p, str) and not Path(p).is_absolute()
                          else p for p in v]
            elif (k in path_keys and isinstance(v, str) and not Path(v).is_absolute()
                  and not is_store_url(v)):
                out[k] = str((base / v).resolve())
            else:
                out[k] = _resolve_paths(v, base)
        return out
    return data


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (YAML would keep the last one
    silently, e.g. a second `train:` section replacing the first)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"line {key_node.start_mark.line + 1}: key '{key}' is given twice "
                                  "in the same section; keep one")
            seen.add(key)
        return super().construct_mapping(node, deep)


def parse_override(pair: str) -> tuple[str, Any]:
    """`key.sub=value` (value in YAML syntax) -> (dotted key, value); ConfigError when unusable."""
    if "=" not in pair:
        raise ConfigError(f"--set expects key=value, got {pair!r}")
    key, text = pair.split("=", 1)
    try:
        return key.strip(), yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        where = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"--set {pair!r}: the value is not valid YAML ({where})") from None


def _apply(data: dict, dotted: str, value: Any) -> None:
    node = data
    *parents, leaf = dotted.split(".")
    for i, p in enumerate(parents):
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: '{'.'.join(parents[:i + 1])}' is a value, not a "
                              "section; give the full key, e.g. --set train.epochs=2")
    node[leaf] = value


def load_config(path: str | Path, overrides: Optional[dict[str, Any]] = None) -> RunConfig:
    """Load a YAML config; errors name the file and the offending key."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"--config {path} is a folder; give a YAML file, e.g. configs/demo.yaml")
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the config: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config is a mapping of sections (dataset:, faces:, ...)")
    data = _resolve_paths(data, path.parent.resolve())
    for dotted, value in (overrides or {}).items():
        _apply(data, dotted, value)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        lines = [f"{path}: invalid config"]
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"])
            lines.append(f"  {loc}: {err['msg']}")
        raise ConfigError("\n".join(lines)) from None


def member_configs(cfg: RunConfig) -> list[RunConfig]:
    """A mix's member configs (`dataset.members`), each parsed once per version of its file (a
    long-lived Dask worker serving several runs sees an edited member config); [] otherwise."""
    return [_load_version(str(p), _file_version(Path(p))) for p in cfg.dataset.members]


def _file_version(path: Path) -> tuple | None:
    try:
        st = path.stat()
        return (st.st_mtime_ns, st.st_size, st.st_ino)
    except OSError:  # load_config says what is wrong with the path
        return None


@lru_cache(maxsize=16)
def _load_version(path: str, version: tuple | None) -> RunConfig:
    return load_config(path)
