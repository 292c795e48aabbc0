"""`signfeed check` and start-up validation: script syntax and templates, each problem with file and line."""

import os
from dataclasses import dataclass
from pathlib import Path

from jinja2 import nodes

from worker.config import Config, Feed, Source
from worker.errors import ConfigError, WorkerError
from worker.render import COMMON_NAMES, SOURCE_FIELDS, Renderer
from worker.script import ScriptJob, ScriptRunner, lint
from worker.secrets import MIN_REDACT_LEN

SQLITE_HEADER = b"SQLite format 3\x00"


def shown_path(path: Path, config: Config) -> str:
    """A path as the operator knows it: relative to the config file's folder when inside it."""
    return str(path.relative_to(config.path.parent)) if path.is_relative_to(config.path.parent) else str(path)


def script_job(source: Source, config: Config) -> ScriptJob | None:
    """The script a source runs, placeholders filled in, or None when it has none."""
    path = config.script_path(source)
    if path is None:
        return None
    return ScriptJob(source.name, shown_path(path, config), config.script_code(source), {},
                     timeout=source.script_timeout, memory_mb=source.script_memory)


def check_scripts(config: Config, runner: ScriptRunner) -> tuple[list[str], list[str]]:
    """(syntax errors, lint warnings) of every source's pre-request script."""
    problems: list[str] = []
    warnings: list[str] = []
    checked: set[str] = set()
    for source in config.sources:
        job = script_job(source, config)
        if job is None:
            continue
        warnings.extend(lint(job, None, config.secrets.secret_values()))
        if job.path in checked:
            continue
        checked.add(job.path)
        try:
            runner.check(job.code, job.path)
        except WorkerError as exc:
            problems.append(f"{source.name}: {exc}")
    return problems, warnings


def check_templates(config: Config) -> tuple[list[str], list[str]]:
    """(errors, names used but never defined) of every feed's templates."""
    renderer = Renderer(config.worker.templates_dir, config.worker.timezone)
    seen: dict[str, _Names | None] = {}
    errors: list[str] = []
    names: list[str] = []
    for feed in config.feeds:
        feed_errors, feed_names = template_problems(renderer, feed, seen)
        errors += [f"feed {feed.output}: {problem}" for problem in feed_errors]
        names += [f"feed {feed.output}: {problem}" for problem in feed_names]
    return errors, names


@dataclass(frozen=True)
class _Use:
    """One template a feed's render runs, and the names that reach it."""

    template: str
    names: frozenset[str]  # besides the environment's globals
    by: str | None = None  # the template that extends, includes or imports it
    optional: bool = False  # {% include ... ignore missing %}
    no_context: str | None = None  # "x imports y without context": the names stopped there


@dataclass(frozen=True)
class _Names:
    """What one template's syntax tree says about the names it uses."""

    unknown: frozenset[str]  # read from the context, and neither set nor guarded by the template itself
    own: frozenset[str]  # set by the template: they reach its base and its includes
    refs: tuple[tuple[str, bool, bool], ...]  # (template, with context, ignore missing) it names as a string
    attributes: frozenset[tuple[str, str]] = frozenset()  # (name, attribute) for every `name.attribute`
    keys: frozenset[str] = frozenset()  # every literal key of `sources["..."]`


def template_problems(renderer: Renderer, feed: Feed, seen: dict[str, _Names | None]) -> tuple[list[str], list[str]]:
    """(errors, names used but never defined) in a feed's template and the templates it extends, includes and
    imports. A name is defined when it is a source of the feed, in COMMON_NAMES, a Jinja global, or set by the
    template itself or (for a base or an include) by the template using it. `seen` caches analyses across feeds.
    """
    problems: list[str] = []
    unknown_names: list[str] = []
    todo = [_Use(feed.template, frozenset(feed.sources) | COMMON_NAMES)]
    done: set[_Use] = set()
    while todo:
        use = todo.pop(0)
        if use in done:
            continue
        done.add(use)
        try:
            if use.template not in seen:
                seen[use.template] = _names(renderer, use.template)
        except WorkerError as exc:
            problems.append(str(exc))
            continue
        names = seen[use.template]
        if names is None:
            by = f" (used by {renderer.shown_dir}/{use.by})" if use.by else ""
            problems += [] if use.optional else [f"template {use.template!r} not found{by}"]
            continue
        shown = f"{renderer.shown_dir}/{use.template}"
        why = (f"which does not reach it: {use.no_context} (add \"with context\" to the import)" if use.no_context
               else f"which is not one of its sources ({', '.join(feed.sources)})")
        unknown = names.unknown - use.names - renderer.global_names
        unknown_names += [f"{shown} uses {name!r}, {why}" for name in sorted(unknown)]
        unknown_names += _source_misuse(shown, feed, names)
        for ref, with_context, optional in names.refs:
            if with_context:
                todo.append(_Use(ref, use.names | names.own, use.template, optional, use.no_context))
            else:  # an import without context sees the globals only
                note = f"{shown} imports {renderer.shown_dir}/{ref} without context"
                todo.append(_Use(ref, frozenset(), use.template, optional, note))
    return list(dict.fromkeys(problems)), list(dict.fromkeys(unknown_names))  # a template used twice reports once


def _source_misuse(shown: str, feed: Feed, names: _Names) -> list[str]:
    """`menu.dta` (no such attribute of a source) and `sources["goood"]` (no such source of this feed)."""
    problems = [f"{shown} uses '{name}.{attribute}', but a source has only {', '.join(SOURCE_FIELDS)}"
                for name, attribute in sorted(names.attributes)
                if name in feed.sources and name not in names.own and attribute not in SOURCE_FIELDS]
    problems += [f"{shown} uses sources[{key!r}], which is not one of its sources ({', '.join(feed.sources)})"
                 for key in sorted(names.keys - set(feed.sources))]
    return problems


def _names(renderer: Renderer, template: str) -> _Names | None:
    """One walk over a template's tree; None when there is no such file.

    Jinja's find_undeclared_variables also reports a top-level {% set %} read inside a block and a name set in an
    {% if %} branch, although both are defined when read; a name the template sets anywhere is no missing source.
    A name tested with `is defined` / `is undefined` or given a `| default` is expected to be absent sometimes.
    """
    found = renderer.undeclared(template)
    if found is None:
        return None
    tree, undeclared = found
    own: set[str] = set()
    guarded: set[str] = set()
    refs: list[tuple[nodes.Expr, bool, bool]] = []
    for node in tree.find_all(nodes.Node):
        match node:
            case nodes.Name(ctx="store" | "param") | nodes.Macro():
                own.add(node.name)
            case nodes.Import() | nodes.FromImport():
                own.update([node.target] if isinstance(node, nodes.Import)
                           else [n if isinstance(n, str) else n[1] for n in node.names])
                refs.append((node.template, node.with_context, False))
            case nodes.Include():
                refs.append((node.template, node.with_context, node.ignore_missing))
            case nodes.Extends():
                refs.append((node.template, True, False))
            case nodes.Test(name="defined" | "undefined", node=nodes.Name() as name):
                guarded.add(name.name)
            case nodes.Filter(name="default" | "d", node=nodes.Name() as name):
                guarded.add(name.name)
    named = tuple((t.value, bool(ctx), bool(opt)) for t, ctx, opt in refs
                  if isinstance(t, nodes.Const) and isinstance(t.value, str))
    attributes, keys = _source_uses(tree)
    return _Names(frozenset(undeclared - own - guarded), frozenset(own), named, attributes, keys)


def _source_uses(tree: nodes.Template) -> tuple[frozenset[tuple[str, str]], frozenset[str]]:
    """Every (name, attribute) of a `name.attribute` and every literal key of `sources["..."]` in a tree."""
    attributes = {(n.node.name, n.attr) for n in tree.find_all(nodes.Getattr)
                  if isinstance(n.node, nodes.Name) and n.node.ctx == "load"}
    keys = {n.arg.value for n in tree.find_all(nodes.Getitem)
            if isinstance(n.node, nodes.Name) and n.node.name == "sources" and isinstance(n.arg, nodes.Const)
            and isinstance(n.arg.value, str)}
    return frozenset(attributes), frozenset(keys)


def check_folders(config: Config) -> list[str]:
    """The folders signfeed writes must exist or be creatable, and be writable, before the first pull."""
    problems = []
    database_dir = Path(config.worker.database.removeprefix("sqlite:///")).parent
    for what, folder in (("feeds_dir", config.worker.feeds_dir), ("database folder", database_dir)):
        if folder.exists() and not folder.is_dir():
            problems.append(f"[worker] {what}: {folder} is a file, not a folder")
            continue
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            problems.append(f"[worker] {what}: cannot create {folder}: {exc.strerror}")
            continue
        if not os.access(folder, os.W_OK | os.X_OK):
            problems.append(f"[worker] {what}: {folder} is not writable by this user")
    return problems


def check_database(config: Config) -> list[str]:
    """An existing database path must be an SQLite file (checked by its header, without opening or creating it)."""
    path = Path(config.worker.database.removeprefix("sqlite:///"))
    if path.is_dir():
        return [f"[worker] database: {path} is a folder; name a file, e.g. sqlite:///data/signfeed.db"]
    try:
        with path.open("rb") as handle:
            header = handle.read(len(SQLITE_HEADER))
    except FileNotFoundError:
        return []  # created at the first start
    except OSError as exc:
        return [f"[worker] database: cannot read {path}: {exc.strerror}"]
    if header and header != SQLITE_HEADER:  # an empty file is a new database to SQLite
        return [f"[worker] database: {path} is not an SQLite database; point database at another file"]
    return []


def secret_warnings(config: Config) -> list[str]:
    """Secrets too short to mask: redaction skips them, since so short a text turns up everywhere by chance."""
    return [f"[secrets] {name}: {len(value)} characters is too short to be masked in logs, feeds and the database "
            f"({MIN_REDACT_LEN} or more are)"
            for name, value in sorted(config.secrets.values.items())
            if name in config.secrets.secret and len(value) < MIN_REDACT_LEN]


def _checks(config: Config, runner: ScriptRunner) -> tuple[list[str], list[str], list[str]]:
    """(problems, warnings, template names never defined) for a loaded config."""
    problems, warnings = check_scripts(config, runner)
    template_errors, names = check_templates(config)
    return (check_folders(config) + check_database(config) + problems + template_errors,
            secret_warnings(config) + warnings, names)


def check_all(config: Config, runner: ScriptRunner) -> tuple[list[str], list[str]]:
    """(problems, warnings) for a loaded config, as `signfeed check` shows them."""
    problems, warnings, names = _checks(config, runner)
    return problems + names, warnings


def require_valid(config: Config, runner: ScriptRunner) -> list[str]:
    """Raise ConfigError on the first problem (the daemon refuses to start or reload); return the warnings.

    A template name never defined is only a warning here: the static analysis can be wrong, and a render that
    reads an undefined name fails anyway, keeping that feed's last good file while every other feed updates.
    """
    problems, warnings, names = _checks(config, runner)
    if problems:
        more = f" (and {len(problems) - 1} more; run signfeed check)" if len(problems) > 1 else ""
        raise ConfigError(problems[0] + more)
    return warnings + names
