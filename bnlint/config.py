"""Settings from `[tool.bnlint]` in the nearest pyproject.toml, or from bnlint.toml / .bnlint.toml.

Discovery walks up from the current directory; in each folder `.bnlint.toml`, then `bnlint.toml`, then a
pyproject.toml that has a `[tool.bnlint]` table wins, as ruff does. Command-line options override files.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from bnlint.errors import ConfigError
from bnlint.findings import Severity

KNOWN_KEYS = {"select", "extend-select", "ignore", "fail-on", "per-file-ignores", "severity", "exclude",
              "force-exclude", "per-node-ignores", "output-format", "max-model-size"}


@dataclass(frozen=True)
class Config:
    select: tuple[str, ...] = ("ALL",)
    extend_select: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    fail_on: Severity = Severity.WARNING
    per_file_ignores: tuple[tuple[str, tuple[str, ...]], ...] = ()
    severity: tuple[tuple[str, Severity], ...] = ()
    per_node_ignores: tuple[tuple[str, tuple[str, ...]], ...] = ()
    exclude: tuple[str, ...] = ()
    force_exclude: bool = False
    output_format: str | None = None
    max_model_size: int | None = None  # bytes; None = bnlint.onnx_loader.DEFAULT_MAX_MODEL_SIZE
    source: Path | None = None
    root: Path = field(default_factory=Path.cwd)

    def severity_overrides(self) -> dict[str, Severity]:
        return dict(self.severity)

    def ignored_for(self, model_path: str) -> tuple[str, ...]:
        """Codes that per-file-ignores switch off for this model (globs relative to the config's folder)."""
        relative = _relative_posix(model_path, self.root)
        codes: list[str] = []
        for pattern, ignored in self.per_file_ignores:
            if _glob_match(relative, pattern):
                codes.extend(ignored)
        return tuple(codes)

    def override(self, **changes) -> Config:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def _relative_posix(path: str, root: Path) -> str:
    absolute = Path(path).resolve()
    try:
        return absolute.relative_to(root.resolve()).as_posix()
    except ValueError:
        return absolute.as_posix()


def _glob_match(relative: str, pattern: str) -> bool:
    """Match like ruff's per-file-ignores: a pattern without `/` matches the file name anywhere."""
    if "/" not in pattern:
        return fnmatch.fnmatch(PurePosixPath(relative).name, pattern) or fnmatch.fnmatch(relative, pattern)
    return PurePosixPath(relative).match(pattern) or fnmatch.fnmatch(relative, pattern)


def find_config_file(start: Path) -> tuple[Path, dict] | None:
    for folder in (start.resolve(), *start.resolve().parents):
        for name in (".bnlint.toml", "bnlint.toml"):
            candidate = folder / name
            if candidate.is_file():
                return candidate, _read_toml(candidate)
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file():
            data = _read_toml(pyproject)
            table = data.get("tool", {}).get("bnlint")
            if table is not None:
                return pyproject, table
    return None


def _read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot parse TOML: {exc}") from None


def _string_list(value, key: str, path: Path) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{path}: `{key}` must be a list of strings")
    return tuple(value)


def parse_config(table: dict, path: Path) -> Config:
    unknown = sorted(set(table) - KNOWN_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(KNOWN_KEYS))})")
    config = Config(source=path, root=path.parent)
    changes: dict = {}
    for key, attr in (("select", "select"), ("extend-select", "extend_select"), ("ignore", "ignore")):
        if key in table:
            changes[attr] = _string_list(table[key], key, path)
    try:
        if "fail-on" in table:
            changes["fail_on"] = Severity.parse(str(table["fail-on"]))
        if "severity" in table:
            if not isinstance(table["severity"], dict):
                raise ConfigError(f"{path}: `severity` must be a table of CODE = \"level\"")
            changes["severity"] = tuple((code.upper(), Severity.parse(str(level)))
                                        for code, level in table["severity"].items())
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    for key in ("per-file-ignores", "per-node-ignores"):
        if key in table:
            entries = table[key]
            if not isinstance(entries, dict):
                raise ConfigError(f"{path}: `{key}` must be a table of \"glob\" = [codes]")
            changes[key.replace("-", "_")] = tuple((glob, _string_list(codes, f"{key}.{glob}", path))
                                                   for glob, codes in entries.items())
    if "exclude" in table:
        changes["exclude"] = _string_list(table["exclude"], "exclude", path)
    if "force-exclude" in table:
        if not isinstance(table["force-exclude"], bool):
            raise ConfigError(f"{path}: `force-exclude` must be true or false")
        changes["force_exclude"] = table["force-exclude"]
    if "output-format" in table:
        changes["output_format"] = str(table["output-format"])
    if "max-model-size" in table:
        try:
            changes["max_model_size"] = parse_size(table["max-model-size"])
        except ValueError as exc:
            raise ConfigError(f"{path}: max-model-size: {exc}") from None
    return replace(config, **changes)


def load_config(explicit: str | None = None, start: Path | None = None) -> Config:
    """The configuration in force: an explicit file, the discovered one, or the defaults."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        data = _read_toml(path)
        if path.name == "pyproject.toml":
            data = data.get("tool", {}).get("bnlint", {})
        return parse_config(data, path)
    found = find_config_file(start or Path.cwd())
    if found is None:
        return Config()
    return parse_config(found[1], found[0])


_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1000, "kib": 1 << 10, "m": 1 << 20, "mb": 1000**2, "mib": 1 << 20,
               "g": 1 << 30, "gb": 1000**3, "gib": 1 << 30, "t": 1 << 40, "tb": 1000**4, "tib": 1 << 40}


def parse_size(value) -> int:
    """`16GiB`, `500MB`, `2G`, `1048576` (or an integer from TOML) -> bytes; K/M/G/T alone are binary units,
    as in `du -h`."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    text = str(value).strip().lower().replace(" ", "").replace("_", "")
    number = text.rstrip("kmgtib")
    unit = text[len(number):]
    try:
        amount = float(number)
    except ValueError:
        amount = -1.0
    if unit not in _SIZE_UNITS or not (0 < amount < float("inf")):
        raise ValueError(f"{value!r} is not a size (examples: 16GiB, 500MB, 1048576)")
    return int(amount * _SIZE_UNITS[unit])
