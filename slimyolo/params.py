"""Declared parameters: how a setting is read from YAML, JSON or a gRPC Struct, checked, defaulted and described, once.

A class of settings (a stage spec, an options object of a core operation) is a frozen dataclass
whose fields are made with :func:`param`: the field's kind, default, bounds, choices and meaning.
Everything else is derived from that one declaration: :meth:`Declared.from_dict` reads and checks
a mapping field by field (a misspelt key is an error naming it, as are a value out of bounds, a NaN
or an integer too large to travel as a JSON/Struct number), :meth:`Declared.to_dict` writes the
flat mapping back, :func:`fields_help` lists the fields for ``--help``.

The kinds that name things in the artifact store are declared here too, because a core
operation's settings and a stage's inputs are read by the same engine:

- a **file** (:data:`FileRef`) is an :class:`~slimyolo.store.Artifact` ``{uri, sha256,
  size_bytes}``, or the key of a file inside a complete tree of the store, such as
  ``runs/sparse/best.weights``; either way the download is verified against the digest (the
  tree's ``SHA256SUMS`` gives it for keys);
- a **data set** (:class:`DataRef`) is a tree in the store holding a darknet-layout data set,
  or a tar archive of one, with the ``.data`` file inside; or annotated photos imported first
  (:class:`ImportRef`);
- an **out** prefix is a new store key with room for the tree published under it.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slimyolo import vocab
from slimyolo.errors import SlimYoloError
from slimyolo.store import MAX_KEY_BYTES, Artifact, validate_key

FileRef = Artifact | str
"""A stored file: an Artifact, or the key of a file inside a complete tree of the store."""

MAX_SEGMENT_BYTES = 255  # a file name, on the local store's file systems and on S3 servers that keep files
MAX_OUT_BYTES = MAX_KEY_BYTES - 256  # the rest is room for the paths inside the tree published there


IMPORT_FORMATS = ("voc", "coco", "yolo")  # slimyolo.data.importer.FORMATS


@dataclass(frozen=True)
class ImportRef:
    """A user's annotated photos, imported into a darknet data set where they are used (``slimyolo data import``).

    In a stage spec ``source`` is a store tree (the user's VOC/COCO/YOLO folder, uploaded with
    ``slimyolo store put``) and ``file`` (the COCO JSON, the YOLO ``.data``/``data.yaml``; empty: found
    in the tree) and ``images`` (the image folder; empty: found) are paths inside it. In the pipeline
    config ``source`` and ``images`` are local paths (relative ones to the working directory).
    """

    format: str
    source: str
    file: str = ""
    images: str = ""
    val_fraction: float | None = None  # None: the source's own split, else 0.2
    seed: int = 0
    names: tuple[str, ...] = ()
    skip_difficult: bool = False

    def options(self, base: Path, name: str, root: Path | None = None) -> Any:
        """The :class:`~slimyolo.data.importer.ImportOptions` of this import, ``images`` taken relative to ``base``
        (the fetched tree in a stage, the working directory in the pipeline); ``root``: where every path must stay."""
        from slimyolo.data.importer import ImportOptions

        return ImportOptions(val_fraction=self.val_fraction, seed=self.seed, names=tuple(self.names),
                             skip_difficult=self.skip_difficult, images=base / self.images if self.images else None,
                             name=name, root=root)

    def to_dict(self) -> dict[str, Any]:
        doc = {"format": self.format, "source": self.source, "file": self.file, "images": self.images,
               "val_fraction": self.val_fraction, "seed": self.seed, "names": list(self.names),
               "skip_difficult": self.skip_difficult}
        return {k: v for k, v in doc.items() if v not in (None, "", [])}


def import_ref(value: Any, where: str, local: bool = False) -> ImportRef:
    """An ImportRef from YAML/JSON; ``local``: the pipeline config's (``source`` and ``images`` are local paths)."""
    f = Fields(value, where)
    fmt = f.choice("format", IMPORT_FORMATS, None)
    if fmt is None:
        raise SlimYoloError(f"{f.where('format')} is required (one of {', '.join(IMPORT_FORMATS)})")
    source = f.raw("source")
    if not isinstance(source, str) or not source:
        raise SlimYoloError(f"{f.where('source')} is required: " + (
            "the path of the VOC folder, the COCO JSON or the YOLO .data/data.yaml" if local
            else "the store tree holding the annotated images"))
    if local:
        file, images = "", f.text("images") or ""
    else:
        source = validate_key(source, f.where("source"))
        file, images = (f.text(k) or "" for k in ("file", "images"))
        for key, path in (("file", file), ("images", images)):
            if path:
                data_file_path(path, f.where(key))
    val_fraction = f.number("val_fraction", float, None, 0.0, 1.0)
    seed = f.number("seed", int, 0, 0)
    names = f.strings("names")
    if len(set(names)) != len(names) or any(n != n.strip() or "\n" in n for n in names):
        raise SlimYoloError(f"{f.where('names')} must list distinct class names, got {list(names)!r}")
    skip = f.flag("skip_difficult")
    f.done()
    return ImportRef(fmt, source, file, images, val_fraction, seed, names, skip)


@dataclass(frozen=True)
class DataRef:
    """A darknet-layout data set in the store: a tree, or a tar archive (gzip allowed) of one; or annotated
    photos (``imported``, written ``import:`` in YAML/JSON) that the stage imports into one first.

    ``data_file`` is the ``.data`` file's path inside; empty: the only ``.data`` file at the root.
    """

    tree: str | None = None
    archive: FileRef | None = None
    data_file: str = ""
    imported: ImportRef | None = None


def file_ref(value: Any, where: str) -> FileRef:
    """A FileRef from YAML/JSON: a store key, or a mapping with uri, sha256 and size_bytes."""
    if isinstance(value, str):
        return validate_key(value, where)
    if isinstance(value, Artifact):
        return value
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - {"uri", "sha256", "size_bytes"})
        if unknown:
            raise SlimYoloError(f"{where}: unknown key {unknown[0]!r} (an artifact has uri, sha256, size_bytes)")
        try:
            uri, sha, size = value["uri"], value["sha256"], value["size_bytes"]
        except KeyError as exc:
            raise SlimYoloError(f"{where}: an artifact needs uri, sha256 and size_bytes ({exc.args[0]} is "
                                "missing)") from None
        if not isinstance(uri, str) or not isinstance(sha, str) or isinstance(size, bool) or not isinstance(size, int):
            raise SlimYoloError(f"{where}: uri and sha256 are strings, size_bytes an integer")
        return Artifact(uri, sha, size)
    raise SlimYoloError(f"{where}: expected a store key or {{uri, sha256, size_bytes}}, got {value!r}")


def out_key(value: Any, where: str) -> str:
    """A store prefix that a stage publishes a tree under: a key with room for every key of the tree.

    Checked when the spec is built, so a name too long for the store fails before the work,
    not at the upload after it.
    """
    key = validate_key(str(value), where)
    size = len(key.encode())
    if size > MAX_OUT_BYTES:
        raise SlimYoloError(f"{where}: {size} bytes is too long; an output prefix has at most {MAX_OUT_BYTES} bytes "
                            f"(the store's keys have at most {MAX_KEY_BYTES}, and the tree's own paths need the rest)")
    longest = max(len(segment.encode()) for segment in key.split("/"))
    if longest > MAX_SEGMENT_BYTES:
        raise SlimYoloError(f"{where}: a segment of {longest} bytes is too long; a segment of a store key is a file "
                            f"name, at most {MAX_SEGMENT_BYTES} bytes")
    return key


def data_file_path(value: Any, where: str) -> str:
    """The ``.data`` file's path inside a data set: relative, with no ``..``."""
    if not isinstance(value, str) or value.startswith("/") or ".." in value.split("/"):
        raise SlimYoloError(f"{where}: {value!r} must be a relative path inside the data set (no leading '/', "
                            "no '..')")
    return validate_key(value, where)


def data_ref(value: Any, where: str) -> DataRef:
    """A DataRef from YAML/JSON: a tree key, or a mapping with ``tree`` or ``archive`` (and ``data_file``)."""
    if isinstance(value, DataRef):  # from a request: checked as the same fields in YAML would be
        value = {"import": value.imported.to_dict()} if value.imported is not None else \
            {"tree": value.tree, "archive": value.archive, "data_file": value.data_file}
    if isinstance(value, str):
        return DataRef(tree=validate_key(value, where))
    if not isinstance(value, Mapping):
        raise SlimYoloError(f"{where}: expected a data set tree key, {{tree|archive, data_file}} or "
                            f"{{import: {{format, source, ...}}}}, got {value!r}")
    if "import" in value:
        others = sorted(k for k in value if k != "import" and value[k] not in (None, ""))
        if others:
            raise SlimYoloError(f"{where}: 'import' takes no {others[0]!r} beside it (the import makes the data set)")
        return DataRef(imported=import_ref(value["import"], f"{where}.import"))
    unknown = sorted(set(value) - {"tree", "archive", "data_file"})
    if unknown:
        raise SlimYoloError(f"{where}: unknown key {unknown[0]!r} (a data set has tree or archive, and data_file; "
                            "or import)")
    tree, archive = value.get("tree"), value.get("archive")
    if (tree is None) == (archive is None):
        raise SlimYoloError(f"{where}: give exactly one of tree (a store key) and archive (a tar file)")
    data_file = value.get("data_file") or ""
    if data_file:
        data_file_path(data_file, f"{where}.data_file")
    return DataRef(tree=validate_key(tree, f"{where}.tree") if tree is not None else None,
                   archive=file_ref(archive, f"{where}.archive") if archive is not None else None,
                   data_file=data_file)


def _is_number(value: Any, kind: type) -> bool:
    """A YAML/JSON number usable as ``kind`` (an integral float is an int; a bool, NaN or an infinity is neither:
    a NaN passes every bound, since every comparison with it is false)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return False
    return kind is not int or float(value).is_integer()


class Fields:
    """Reads the fields of a spec (or a config) out of a mapping, each checked and named in errors."""

    def __init__(self, doc: Any, source: str, flags: bool = False, prefix: str = "") -> None:
        if not isinstance(doc, Mapping):
            where = f"{source}: '{prefix[:-1]}'" if prefix else source
            raise SlimYoloError(f"{where}: expected a mapping of fields, got {type(doc).__name__}")
        self.doc, self.source, self.used, self.flags, self.prefix = doc, source, set(), flags, prefix

    def _get(self, name: str, required: bool) -> Any:
        self.used.add(name)
        value = self.doc.get(name)
        if value is None and required:
            raise SlimYoloError(f"{self.where(name)} is required")
        return value

    def where(self, name: str) -> str:
        """The field as the user wrote it: ``source: 'name'``, or ``--name`` on a command line (``flags``)."""
        return flag_name(name) if self.flags else f"{self.source}: '{self.prefix}{name}'"

    def raw(self, name: str) -> Any:
        """The value as it is (None when absent), for fields a caller checks itself."""
        return self._get(name, False)

    def file(self, name: str, required: bool = False) -> FileRef | None:
        value = self._get(name, required)
        return None if value is None else file_ref(value, self.where(name))

    def data(self, name: str, required: bool = False) -> DataRef | None:
        value = self._get(name, required)
        return None if value is None else data_ref(value, self.where(name))

    def key(self, name: str, required: bool = False) -> str | None:
        value = self._get(name, required)
        return None if value is None else validate_key(str(value), self.where(name))

    def out(self, name: str) -> str:
        """A required output prefix (see :func:`out_key`)."""
        return out_key(self._get(name, True), self.where(name))

    def number(self, name: str, kind: type, default: Any, low: float | None = None, high: float | None = None,
               low_open: bool = False, high_open: bool = False) -> Any:
        value = self._get(name, False)
        if value is None:
            return default
        if not _is_number(value, kind):
            raise SlimYoloError(f"{self.where(name)} must be {'an integer' if kind is int else 'a number'}, "
                                f"got {value!r}")
        value = kind(value)
        if low is not None and (value <= low if low_open else value < low):
            raise SlimYoloError(f"{self.where(name)} must be {'above' if low_open else 'at least'} {low}, got {value}")
        if high is not None and (value >= high if high_open else value > high):
            raise SlimYoloError(f"{self.where(name)} must be {'below' if high_open else 'at most'} {high}, got {value}")
        return value

    def flag(self, name: str, default: bool = False) -> bool:
        value = self._get(name, False)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise SlimYoloError(f"{self.where(name)} must be true or false, got {value!r}")
        return value

    def choice(self, name: str, options: tuple[str, ...], default: str | None) -> str | None:
        value = self._get(name, False)
        return default if value is None else vocab.choose(value, options, self.where(name))

    def text(self, name: str, default: str | None = None) -> str | None:
        """Text; a number is taken as written (``name: 2``), a list, a mapping or a bool is an error."""
        value = self._get(name, False)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise SlimYoloError(f"{self.where(name)} must be text, got {value!r}")
        return str(value)

    def number_range(self, name: str, kind: type, default: Any) -> Any:
        """(low, high, step): a range of coarse points, given as its three numbers (not as the points)."""
        return self.numbers(name, kind, 3, default)

    def numbers(self, name: str, kind: type, count: int, default: Any) -> Any:
        value = self._get(name, False)
        if value is None:
            return default
        if not isinstance(value, list | tuple) or len(value) != count:
            raise SlimYoloError(f"{self.where(name)} must be a list of {count} numbers (low, high, step), "
                                f"got {value!r}")
        out = []
        for v in value:
            if not _is_number(v, kind):
                raise SlimYoloError(f"{self.where(name)}: {v!r} is not {'an integer' if kind is int else 'a number'}")
            out.append(kind(v))
        return tuple(out)

    def strings(self, name: str) -> tuple[str, ...]:
        value = self._get(name, False)
        if value is None:
            return ()
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
            raise SlimYoloError(f"{self.where(name)} must be a list of non-empty strings, got {value!r}")
        return tuple(value)

    def rest(self) -> dict[str, Any]:
        """The keys not read so far."""
        return {k: v for k, v in self.doc.items() if k not in self.used}

    def done(self) -> None:
        """No key may be left unread: a misspelt key is an error, not a silently ignored setting."""
        unknown = sorted(self.rest())
        if unknown:
            raise SlimYoloError(f"{self.source}: unknown field '{self.prefix}{unknown[0]}' (known: "
                                f"{', '.join(sorted(self.used))})")



@dataclass(frozen=True)
class Check:
    """How one spec field is read from YAML/JSON and checked (see :func:`param`)."""

    kind: str  # file, data, key, out, int, float, bool, choice, text, strings, irange, frange, img_size
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    options: tuple[str, ...] = ()

    def read(self, f: Fields, name: str, default: Any, required: bool) -> Any:
        """The field's value from ``f`` (``default`` when absent), checked; errors name the field."""
        kind = self.kind
        if kind in ("file", "data", "key"):
            value = getattr(f, kind)(name, required)
            return default if value is None else value
        if kind == "out":
            return f.out(name)
        if required and f.raw(name) is None:
            raise SlimYoloError(f"{f.where(name)} is required")
        if kind in ("int", "float"):
            return f.number(name, int if kind == "int" else float, default, self.low, self.high, self.low_open,
                            self.high_open)
        if kind == "img_size":
            size = f.number(name, int, default, 32)
            if size is not None and size % 32:
                raise SlimYoloError(f"{f.where(name)} must be a multiple of 32, got {size}")
            return size
        if kind == "bool":
            return f.flag(name, default)
        if kind == "choice":
            return f.choice(name, self.options, default)
        if kind == "text":
            return f.text(name, default)
        if kind == "strings":
            return f.strings(name) or default
        if kind in ("irange", "frange"):
            return f.number_range(name, int if kind == "irange" else float, default)
        raise AssertionError(f"unknown field kind {kind!r}")


def param(kind: str, default: Any = dataclasses.MISSING, *, low: float | None = None, high: float | None = None,
          low_open: bool = False, high_open: bool = False, options: tuple[str, ...] = (), help: str = "") -> Any:
    """A spec field: its kind, its default (none: required), its bounds and its meaning (``help``, shown by
    ``slimyolo stage KIND --help``), declared once."""
    check = Check(kind, low, high, low_open, high_open, options)
    return field(default=default, metadata={"check": check, "help": help})


def declared_fields(cls: type) -> list[dataclasses.Field]:
    """The declared fields of a class (those made with :func:`param`)."""
    return [f for f in dataclasses.fields(cls) if "check" in f.metadata]


_KIND_TEXT = {"file": "a store key of a file in a tree, or {uri, sha256, size_bytes}",
              "data": "a data set: a store tree key, {tree or archive, data_file} or {import: {format, source, ...}}",
              "key": "a store key prefix", "out": "a new store key prefix", "int": "an integer", "float": "a number",
              "img_size": "a multiple of 32", "bool": "true or false", "text": "text",
              "strings": "a list of strings", "irange": "[low, high, step], integers",
              "frange": "[low, high, step], numbers"}


def _bounds(check: Check) -> str:
    if check.kind == "choice":
        return "one of " + ", ".join(check.options)
    text = _KIND_TEXT[check.kind]
    if check.low is not None and check.high is not None:
        left, right = "(" if check.low_open else "[", ")" if check.high_open else "]"
        return f"{text} in {left}{check.low:g}, {check.high:g}{right}"
    if check.low is not None and check.kind != "img_size":
        return f"{text} {'above' if check.low_open else 'at least'} {check.low:g}"
    return text


def _default_text(value: Any) -> str:
    if value is dataclasses.MISSING:
        return "required"
    if value is None:
        return "default unset"
    if isinstance(value, bool):
        return f"default {str(value).lower()}"
    if isinstance(value, tuple):
        return f"default [{', '.join(f'{v:g}' if isinstance(v, float) else str(v) for v in value)}]"
    return f"default {value:g}" if isinstance(value, float) else f"default {value}"


def fields_help(cls: type, title: str, footer: str = "", width: int = 100) -> str:
    """The fields of a declared class as ``--help`` lists them under ``title``: name, kind and bounds,
    default and meaning, all read from their :func:`param` declarations; ``footer`` last."""
    lines = [title]
    for fld in sorted(declared_fields(cls), key=lambda f: f.default is not dataclasses.MISSING):
        check, meaning = fld.metadata["check"], fld.metadata.get("help", "")
        text = f"{meaning} ({_default_text(fld.default)}; {_bounds(check)})".lstrip()
        lines += textwrap.wrap(text, width, initial_indent=f"  {fld.name:<18}", subsequent_indent=" " * 20)
    if footer:
        lines += textwrap.wrap(footer, width)
    return "\n".join(lines)


class Declared:
    """``from_dict``/``to_dict`` of a class of declared settings, derived from its :func:`param` fields."""

    @classmethod
    def from_dict(cls, doc: Any, source: str | None = None, flags: bool = False, prefix: str = "") -> Any:
        """The settings in ``doc`` (a mapping of flat keys), each checked; errors name ``source`` and the field
        (as ``--flag`` with ``flags``: the values came from a command line, :func:`from_args`; as
        ``'augment.mosaic'`` with ``prefix="augment."``: a section of a larger mapping)."""
        source = source or cls.__name__
        check_values(doc, source, prefix.rstrip("."))
        f = Fields(doc, source, flags, prefix)
        values = {}
        for fld in declared_fields(cls):
            required = fld.default is dataclasses.MISSING
            values[fld.name] = fld.metadata["check"].read(f, fld.name, None if required else fld.default, required)
        values.update(cls._extra(f))
        spec = cls(**values)
        spec._validate(f)
        return spec

    @classmethod
    def _extra(cls, f: Fields) -> dict[str, Any]:
        """Fields not declared one by one (the training settings); by default none: unknown keys are errors."""
        f.done()
        return {}

    def _validate(self, f: Fields) -> None:
        """Checks across fields, after each field has been checked on its own."""

    def to_dict(self) -> dict[str, Any]:
        """The spec as YAML/JSON data: every declared field that has a value (zeros included)."""
        return {fld.name: plain(getattr(self, fld.name)) for fld in declared_fields(type(self))
                if getattr(self, fld.name) is not None}

    @classmethod
    def taken_from(cls, settings: Any) -> Any:
        """This class's settings taken from ``settings``, an object declaring them too (a stage spec that
        embeds these options, a larger options class), field by field without naming one: a field added
        here reaches the core from every class that embeds it."""
        return cls(**{fld.name: getattr(settings, fld.name) for fld in declared_fields(cls)})


STORE_KINDS = ("file", "data", "key", "out")  # fields naming store objects: a command line names local paths instead


def flag_name(name: str) -> str:
    """The command-line flag of a declared field: ``layer_keep`` → ``--layer-keep``."""
    return "--" + name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser | Any, cls: type, *, skip: tuple[str, ...] = (),
                  required: tuple[str, ...] = ()) -> None:
    """One flag per declared field of ``cls`` (store kinds and ``skip`` excepted), its help saying the meaning,
    default and bounds from the declaration. Every default is None here, so :func:`from_args` passes only what
    the user wrote and the declaration's default applies, as it does to a YAML key left out."""
    for fld in declared_fields(cls):
        check = fld.metadata["check"]
        if check.kind in STORE_KINDS or fld.name in skip:
            continue
        text = f"{fld.metadata.get('help', '')} ({_default_text(fld.default)}; {_bounds(check)})".lstrip()
        text = text.replace("%", "%%")  # argparse formats help strings with %
        kwargs: dict[str, Any] = {"dest": fld.name, "default": None, "help": text,
                                  "required": fld.name in required}
        if check.kind == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        elif check.kind == "choice":
            kwargs["choices"] = check.options
        else:
            kwargs["metavar"] = _METAVARS.get(check.kind, "X")
            if check.kind in ("int", "img_size", "float"):
                kwargs["type"] = float if check.kind == "float" else int
        parser.add_argument(flag_name(fld.name), **kwargs)


_METAVARS = {"int": "N", "img_size": "N", "float": "X", "text": "TEXT", "strings": "A,B,...",
             "irange": "LO:HI[:STEP]", "frange": "LO:HI[:STEP]"}


def from_args(cls: type, args: argparse.Namespace, extra: Mapping[str, Any] | None = None) -> Any:
    """An instance of ``cls`` from the flags :func:`add_arguments` made (plus ``extra`` values), read and checked
    by the same :meth:`Declared.from_dict` as a YAML spec, errors naming the flag."""
    doc: dict[str, Any] = {}
    for fld in declared_fields(cls):
        value = getattr(args, fld.name, None)
        if value is None:
            continue
        kind = fld.metadata["check"].kind
        if kind in ("irange", "frange") and isinstance(value, str):
            value = _range(value, fld, int if kind == "irange" else float)
        elif kind == "strings" and isinstance(value, str):
            value = [v.strip() for v in value.split(",")]
        doc[fld.name] = value
    return cls.from_dict({**doc, **(extra or {})}, "command line", flags=True)


def _range(text: str, fld: dataclasses.Field, cast: type) -> list[Any]:
    """``LO:HI`` or ``LO:HI:STEP`` → [lo, hi, step]; without STEP the declared default's step (else 1)."""
    parts = text.split(":")
    try:
        if len(parts) not in (2, 3):
            raise ValueError
        values = [cast(p) for p in parts]
    except ValueError:
        raise SlimYoloError(f"{flag_name(fld.name)} {text!r}: expected LO:HI or LO:HI:STEP") from None
    if len(values) == 2:
        default = fld.default if isinstance(fld.default, tuple) else None
        values.append(default[2] if default is not None else cast(1))
    return values


MAX_EXACT_INT = 2**53  # integers travel exactly as JSON and protobuf Struct numbers (doubles) below this


def check_values(value: Any, source: str, where: str = "") -> None:
    """Refuse NaN and infinities anywhere in a spec (its settings included): no stage takes one, and a NaN
    passes every range check (every comparison with it is false), so it would fail deep inside the work.
    Integers are below 2**53 in magnitude, so that they reach the core unchanged over gRPC too."""
    if isinstance(value, float) and not math.isfinite(value):
        raise SlimYoloError(f"{source}: '{where}' must be a finite number, got {value}")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= MAX_EXACT_INT:
        raise SlimYoloError(f"{source}: '{where}' must be below 2**53 in magnitude, got {value}")
    if isinstance(value, Mapping):
        for key, item in value.items():
            check_values(item, source, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            check_values(item, source, f"{where}[{i}]")


def plain(value: Any) -> Any:
    """Specs as YAML/JSON data: Artifacts and DataRefs as mappings, tuples as lists, no empty fields."""
    if isinstance(value, Artifact):
        return dataclasses.asdict(value)
    if isinstance(value, DataRef):
        if value.imported is not None:
            return {"import": value.imported.to_dict()}
        return {k: plain(v) for k, v in dataclasses.asdict(value).items() if v not in (None, "")}
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    return value
