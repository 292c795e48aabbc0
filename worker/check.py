"""`signfeed check` and start-up validation: script syntax and templates, each problem with file and line."""

from worker.config import Config
from worker.errors import WorkerError
from worker.render import Renderer
from worker.script import ScriptRunner


def check_scripts(config: Config, runner: ScriptRunner) -> list[str]:
    """Syntax errors in every source's pre-request script (placeholders substituted as at run time)."""
    problems = []
    seen: set[str] = set()
    for source in config.sources:
        path = config.script_path(source)
        if path is None or str(path) in seen:
            continue
        seen.add(str(path))
        shown = str(path.relative_to(config.path.parent)) if path.is_relative_to(config.path.parent) else str(path)
        try:
            runner.check(config.secrets.substitute(path.read_text(encoding="utf-8")), shown)
        except WorkerError as exc:
            problems.append(f"{source.name}: {exc}")
    return problems


def check_templates(config: Config) -> list[str]:
    renderer = Renderer(config.worker.templates_dir, config.worker.timezone)
    problems = []
    for feed in config.feeds:
        try:
            renderer.check(feed.template)
        except WorkerError as exc:
            problems.append(f"feed {feed.output}: {exc}")
    return problems


def check_all(config: Config) -> tuple[list[str], list[str]]:
    """(problems, warnings) for a loaded config."""
    with ScriptRunner(size=1) as runner:
        problems = check_scripts(config, runner)
    return problems + check_templates(config), []
