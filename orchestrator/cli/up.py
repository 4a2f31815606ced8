"""`orch up`: validate, lock, start the spawner, then hand over to the `Master` (foreground or detached)."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

from ..config.load import Config, Settings, TemplateCache, load_config, load_settings
from ..control.record import remove_record, write_record
from ..control.client import ControlClient, ControlError
from ..errors import ConfigError, ConfigProblem, OrchError
from ..observe.masterlog import TurnHandler
from .progress import Progress
from ..spawn.pidfile import PidLock, folder_problem, open_own_file
from ..spawn.listeners import Listeners, take_systemd_sockets
from ..spawn.spawner import SpawnerClient
from ..title import set_title


def run_up(path: Path, quiet: bool = False, detach: bool = False, fresh: bool = False) -> int:
    """Run the master; validation errors raise before anything starts (exit 2). `fresh`:
    forget which instances `orch stop` left stopped (else they stay stopped)."""
    if detach:
        from ..expand.render import expand
        config = load_config(path)
        expand(config)  # every error on this terminal, before daemonizing
        if "LISTEN_FDS" not in os.environ:  # a port in use too: bind once here, and let go
            probe = Listeners()
            _bind(probe, config)
            probe.close_all()
        _make_folders(config.settings, config.path)
        return _detach(config.path, config.settings.control_socket, config.settings.log_dir,
                       config.settings.pidfile, fresh)
    return _foreground(path, quiet, fresh)


def _make_folders(settings: Settings, config: Path) -> None:
    """Create the master's folders, and refuse (exit 2, one line each) any another user could
    write: a link planted there would aim the pidfile's truncation or a log's appends at any
    file, and a state file put there would make this master SIGKILL the pids it names."""
    problems = []
    seen: set[Path] = set()
    for key, folder in (("orchestrator.control_socket", settings.control_socket.parent),
                        ("orchestrator.pidfile", settings.pidfile.parent),  # state file, master.log
                        ("orchestrator.log_dir", settings.log_dir)):
        if folder in seen:
            continue
        seen.add(folder)
        why = folder_problem(folder)
        if why:
            problems.append(ConfigProblem(str(config), key, f"folder {folder} {why}"))
    if problems:
        raise ConfigError(problems)


def _foreground(path: Path, quiet: bool, fresh: bool = False) -> int:
    """Lock, end leftovers, start the spawner, then validate the whole file and run.

    The spawner (a fresh interpreter, see spawner.py) starts as early as possible, so its
    own start-up overlaps the config's load. A config error still starts nothing: the
    spawner is told to exit and the lock released before the error is reported (exit 2)."""
    settings = load_settings(path)
    _make_folders(settings, path)
    log_handler = setup_logging()
    lock = PidLock(settings.pidfile).acquire()
    try:
        from ..spawn.orphans import end_leftovers, read_stopped, state_path
        held = frozenset() if fresh else frozenset(read_stopped(settings.pidfile))
        end_leftovers(settings.pidfile, keep=held)
        listeners = Listeners(take_systemd_sockets())  # before the spawner: it must not see LISTEN_*
        spawner = SpawnerClient.start(f"orch: spawner {settings.name}",  # it closes every fd it inherits
                                      state=str(state_path(settings.pidfile)))
        try:
            from ..expand.render import expand
            from ..master import Master
            templates = TemplateCache()  # the master's: its first reload parses only what changed
            config = load_config(path, templates)
            specs = expand(config)
            _bind(listeners, config)
        except BaseException:
            spawner.exit()
            os.waitpid(spawner.pid, 0)
            raise
    except BaseException:
        lock.release()
        log_handler.flush()  # what was logged goes out before the error is reported
        raise
    set_title(f"orch: master {config.settings.name} [{config.path}]")
    master = Master(config, specs, spawner, lock, quiet=quiet, listeners=listeners, templates=templates,
                    held=held)
    master.loop.before_wait.append(log_handler.flush)
    # Clients find this master from the config's path alone, even once the file is broken.
    write_record(path, config.settings.control_socket, config.settings.log_dir)
    try:
        code = master.run()
    finally:
        remove_record(path)
        log_handler.flush()  # also when run() raised: its lines before the error's report
    # Exit now, not through interpreter finalization: `orch down` waits for the control
    # connection to close, and it must close when this process is gone, not before.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _bind(listeners: Listeners, config: Config) -> None:
    """Bind every [sockets.*] before any worker starts; a failure is a config error (exit 2)."""
    listeners.bind_config(config.sockets, config.path)
    unused = set(listeners.adopted) - {d.name for d in config.sockets}
    if unused:
        logging.getLogger("orch").warning("sockets from systemd with no [sockets.NAME] table: %s",
                                          ", ".join(sorted(unused)))


def _detach(path: Path, socket_path: Path, log_dir: Path, pidfile: Path, fresh: bool = False) -> int:
    """Start a daemonized master and return once *this* master answers on its socket.

    Success means a ping answered by the daemon's own pid (not by some other master already
    listening there); a daemon that dies during start-up fails the command at once, with
    the end of its log."""
    PidLock(pidfile).acquire().release()  # another master for this config: fail here (exit 1)
    log_file = pidfile.parent / "master.log"
    # Opened here, not in the daemon: a link planted at its path fails this command (exit 2).
    log_fd = open_own_file(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    try:
        daemon = _daemonize(path, log_file, log_fd, fresh)
    finally:
        os.close(log_fd)
    progress = Progress(f"starting master {daemon}: waiting for it to listen on {socket_path}")
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            progress.show()
            if _answers(socket_path, daemon):
                progress.clear()
                print(f"orch master {daemon} is running in the background (logs: {log_file})")
                return 0
            if not _running(daemon):
                raise OrchError(f"the detached master exited during start-up; the end of {log_file}:\n"
                                + _tail(log_file, 10))
            time.sleep(0.05)
    finally:
        progress.clear()  # before the error is printed
    raise OrchError(f"the detached master did not start listening on {socket_path}; see {log_file}")


def _daemonize(path: Path, log_file: Path, log_fd: int, fresh: bool = False) -> int:
    """Double fork + setsid, stdio to `log_fd` (`log_file`); returns the daemon's pid (sent up a pipe)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        os.setsid()
        if os.fork() != 0:
            os._exit(0)
        os.write(write_end, f"{os.getpid()}\n".encode())
        os.close(write_end)  # the parent now waits on the socket instead
        _run_daemon(path, log_fd, fresh)
    os.close(write_end)
    os.waitpid(pid, 0)
    with os.fdopen(read_end, "rb") as pipe:
        reported = pipe.read().strip()
    if not reported:
        raise OrchError(f"the detached master did not start; see {log_file}")
    return int(reported)


def _run_daemon(path: Path, log_fd: int, fresh: bool = False) -> None:  # pragma: no cover - in the daemon
    """In the daemon: stdin from /dev/null, stdout and stderr to the log, then the master."""
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(null)
    os.close(log_fd)
    os.chdir("/")
    code = 1
    try:
        code = _foreground(path, quiet=True, fresh=fresh)
    except OrchError as exc:
        print(f"orch: {exc}", file=sys.stderr)
    finally:
        os._exit(code)


def _answers(socket_path: Path, daemon: int) -> bool:
    """The master listening on `socket_path` is `daemon`."""
    try:
        client = ControlClient(socket_path, timeout=2)
        try:
            return client.call("ping")["pid"] == daemon
        finally:
            client.close()
    except (OrchError, ControlError, OSError):  # not listening yet (NoMasterError), or mid-start
        return False


def _tail(path: Path, count: int) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("  " + line for line in lines[-count:])


def setup_logging() -> TurnHandler:
    """The master's log on stderr (fd 2), written once per loop turn (see TurnHandler)."""
    handler = TurnHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s orch %(levelname)s %(message)s"))
    # The format shows none of these, and a start of 5,000 logs 5,000 lines: no caller
    # lookup (a walk of the stack) and no thread or process names per record.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    root = logging.getLogger("orch")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False
    os.environ.pop("ORCH_INSTANCE", None)
    return handler


def _running(pid: int) -> bool:
    """psutil's answer: alive and not a zombie (the daemon is our grandchild: never reaped here)."""
    import psutil
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
