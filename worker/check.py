"""`signfeed check` and start-up validation: script syntax and templates, each problem with file and line."""

import os
from pathlib import Path

from worker.config import Config, Source
from worker.errors import ConfigError, WorkerError
from worker.render import Renderer
from worker.script import ScriptJob, ScriptRunner, lint


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


def check_templates(config: Config) -> list[str]:
    renderer = Renderer(config.worker.templates_dir, config.worker.timezone)
    problems = []
    for feed in config.feeds:
        try:
            renderer.check(feed.template)
        except WorkerError as exc:
            problems.append(f"feed {feed.output}: {exc}")
    return problems


def check_folders(config: Config) -> list[str]:
    """The folders signfeed writes must exist or be creatable, and be writable, before the first pull."""
    problems = []
    database_dir = Path(config.worker.database.removeprefix("sqlite:///")).parent
    for what, folder in (("feeds_dir", config.worker.feeds_dir), ("database folder", database_dir)):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            problems.append(f"[worker] {what}: cannot create {folder}: {exc.strerror}")
            continue
        if not os.access(folder, os.W_OK | os.X_OK):
            problems.append(f"[worker] {what}: {folder} is not writable by this user")
    return problems


def check_all(config: Config, runner: ScriptRunner) -> tuple[list[str], list[str]]:
    """(problems, warnings) for a loaded config."""
    problems, warnings = check_scripts(config, runner)
    return check_folders(config) + problems + check_templates(config), warnings


def require_valid(config: Config, runner: ScriptRunner) -> list[str]:
    """Raise ConfigError on the first problem (the daemon refuses to start or reload); return the warnings."""
    problems, warnings = check_all(config, runner)
    if problems:
        more = f" (and {len(problems) - 1} more; run signfeed check)" if len(problems) > 1 else ""
        raise ConfigError(problems[0] + more)
    return warnings
