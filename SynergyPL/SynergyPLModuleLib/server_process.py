"""The local server's life as the panel shows it, without Qt: starting, running, failed, stopped.

:class:`ServerProcess` is told what happened to the process (``started``, ``error_occurred``,
``finished``, output, "the server answered") and reports a state and a sentence through its
``state_changed`` signal. In Slicer a ``QProcess`` feeds it (its ``started``, ``errorOccurred`` and
``finished`` signals); elsewhere :class:`SubprocessDriver` feeds it from :mod:`subprocess`. So a
process that cannot start, or dies while starting, never leaves the panel at "Starting...".
"""

from __future__ import annotations

import queue
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence

from .local_server import INSTALL_HINT
from .signals import Signal

STOPPED, STARTING, RUNNING, FAILED = "stopped", "starting", "running", "failed"

# QProcess::ProcessError values, in Qt's order (Qt 5.15 and 6).
PROCESS_ERRORS = ("FailedToStart", "Crashed", "Timedout", "ReadError", "WriteError", "UnknownError")
LOG_LINES_KEPT = 200


def process_error_name(error) -> str:
    """``QProcess.ProcessError`` (enum or int) or a name -> the name, e.g. ``"FailedToStart"``."""
    if isinstance(error, str):
        return error
    try:
        return PROCESS_ERRORS[int(error)]
    except (ValueError, TypeError, IndexError):
        return "UnknownError"


class ServerProcess:
    """State of one local-server process.

    Signals: ``state_changed(state, message)`` (state: stopped | starting | running | failed) and
    ``output(text)`` (log text as it arrives). ``start_timeout``: seconds the server may take to answer.
    """

    def __init__(self, program: str = "", arguments: Sequence[str] = (), url: str = "",
                 start_timeout: float = 60.0, clock=time.monotonic) -> None:
        self.program, self.arguments, self.url = program, list(arguments), url
        self.start_timeout = start_timeout
        self._clock = clock
        self.state = STOPPED
        self.message = ""
        self.started_at: float | None = None
        self.stop_requested = False
        self.log: list[str] = []
        self.history: list[str] = []  # every state taken, in order
        self.state_changed = Signal("state_changed")
        self.output = Signal("output")

    # -- what the driver reports --------------------------------------------------------------------
    def launching(self) -> None:
        """The process is being started (before ``start()``)."""
        self.stop_requested = False
        self.log.clear()
        self.started_at = self._clock()
        self._set(STARTING, f"Starting the local server on {self.url}…")

    def output_received(self, text: str) -> None:
        if not text:
            return
        self.log.extend(text.splitlines())
        del self.log[:-LOG_LINES_KEPT]
        self.output.emit(text)

    def server_answered(self, summary: str = "") -> None:
        """The server answered a request: it is up."""
        if self.state == STARTING:
            self._set(RUNNING, f"Local server running on {self.url}" + (f": {summary}" if summary else "."))

    def error_occurred(self, error) -> None:
        """``QProcess.errorOccurred`` (or its name). FailedToStart ends the start; Crashed is followed
        by ``finished`` (handled there)."""
        name = process_error_name(error)
        if name == "FailedToStart":
            self._set(FAILED, f"The server's Python could not be started: {self.program} is missing or not "
                              f"executable. Choose the Python of the environment where SynergyPL is "
                              f"installed ({INSTALL_HINT}).")
        elif name == "Crashed" or self.state not in (STARTING, RUNNING):
            return
        elif name == "Timedout":
            return  # a waitFor...() timed out; the process itself may be fine
        else:
            self._set(FAILED, f"The connection to the local server process broke ({name}); see its log.")

    def finished(self, exit_code: int | None, crashed: bool = False) -> None:
        """The process ended (``QProcess.finished``)."""
        if self.stop_requested or self.state == STOPPED:
            self._set(STOPPED, "The local server stopped.")
            return
        if self.state == FAILED and exit_code is None:
            return  # FailedToStart already said why
        how = "crashed" if crashed else f"exited with code {exit_code}"
        when = "while starting" if self.state == STARTING else ""
        self._set(FAILED, " ".join(p for p in (f"The local server {how}", when) if p) + ". " + self.diagnosis())

    def stopping(self) -> None:
        """The user (or Slicer's exit) asked the server to stop."""
        self.stop_requested = True

    def check(self) -> bool:
        """Called periodically while starting: fails the start after ``start_timeout``. True while the
        panel should keep waiting for the server to answer."""
        if self.state != STARTING:
            return False
        if self.started_at is not None and self._clock() - self.started_at > self.start_timeout:
            self._set(FAILED, f"The local server did not answer within {self.start_timeout:.0f} s; see its log.")
            return False
        return True

    # -- reading ------------------------------------------------------------------------------------
    def diagnosis(self) -> str:
        """What the log says went wrong, as advice."""
        text = "\n".join(self.log)
        if "No module named" in text and ("SynergyPLLib" in text or "synergypl" in text.lower()):
            return f"The chosen Python has no SynergyPL: choose the right one or run {INSTALL_HINT} in it."
        if "SRE module mismatch" in text or "Fatal Python error" in text:
            return ("Its Python could not start in this environment (Slicer's Python variables leaked into it); "
                    "see its log.")
        if "is already being served" in text:
            return "Another server already serves this project; stop it or choose another project."
        if "address already in use" in text.lower():
            return "The port is taken; start again to use another one."
        tail = [line for line in self.log if line.strip()][-3:]
        return ("Last log lines: " + " | ".join(tail)) if tail else "It printed nothing."

    @property
    def is_active(self) -> bool:
        return self.state in (STARTING, RUNNING)

    def _set(self, state: str, message: str) -> None:
        self.state, self.message = state, message
        self.history.append(state)
        self.state_changed.emit(state, message)


class SubprocessDriver:
    """Runs a :class:`ServerProcess`'s command with :mod:`subprocess` and feeds it, like the panel's
    QProcess does. :meth:`poll` delivers output and the exit on the calling thread."""

    def __init__(self, process: ServerProcess, environment: Mapping[str, str] | None = None,
                 cwd: str | None = None) -> None:
        self.process, self.environment, self.cwd = process, environment, cwd
        self.popen: subprocess.Popen | None = None
        self._lines: queue.Queue = queue.Queue()
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        self.process.launching()
        try:
            self.popen = subprocess.Popen([self.process.program, *self.process.arguments],
                                          env=dict(self.environment) if self.environment is not None else None,
                                          cwd=self.cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                          start_new_session=True)
        except OSError:
            self.process.error_occurred("FailedToStart")
            self.process.finished(None)
            return
        self._reader = threading.Thread(target=self._read, daemon=True, name="SynergyPL-server-log")
        self._reader.start()

    def _read(self) -> None:
        assert self.popen is not None and self.popen.stdout is not None
        for raw in iter(self.popen.stdout.readline, b""):
            self._lines.put(raw.decode("utf-8", "replace"))
        self._lines.put(None)

    def poll(self) -> None:
        """Deliver output; report the exit once all output was delivered."""
        if self.popen is None:
            return
        ended = False
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                break
            if line is None:
                ended = True
                break
            self.process.output_received(line)
        if ended:
            code = self.popen.wait()
            self.process.finished(code, crashed=code < 0)
            self.popen = None

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen is None:
            return
        self.process.stopping()
        self.popen.terminate()
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)
        if self._reader is not None:
            self._reader.join(5)
        self.poll()


class QProcessDriver:
    """Runs a :class:`ServerProcess`'s command in a ``QProcess`` (in Slicer) and feeds it, like
    :class:`SubprocessDriver` does outside Slicer.

    Signal ``log(text)``: what the panel's server log shows (the command line, the server's output,
    its exit). Qt is imported only when the process is started or looked at, so this module (and the
    state machine above) imports without Qt.
    """

    def __init__(self, process: ServerProcess, environment: Mapping[str, str] | None = None,
                 cwd: str | None = None) -> None:
        self.process, self.environment, self.cwd = process, environment, cwd
        self.qprocess = None
        self.log = Signal("log")

    @property
    def is_running(self) -> bool:
        if self.qprocess is None:
            return False
        import qt  # Slicer's PythonQt

        return self.qprocess.state() != qt.QProcess.NotRunning

    def start(self) -> None:
        import qt  # Slicer's PythonQt

        qprocess = qt.QProcess()
        qprocess.setProcessChannelMode(qt.QProcess.MergedChannels)
        environment = qt.QProcessEnvironment()
        for key, value in (self.environment or {}).items():
            environment.insert(key, value)
        qprocess.setProcessEnvironment(environment)
        if self.cwd:
            qprocess.setWorkingDirectory(str(self.cwd))
        qprocess.readyReadStandardOutput.connect(self._on_output)
        qprocess.connect("errorOccurred(QProcess::ProcessError)", self._on_error)
        qprocess.connect("finished(int,QProcess::ExitStatus)", self._on_finished)
        self.log.emit("$ " + " ".join([self.process.program, *self.process.arguments]))
        self.qprocess = qprocess
        self.process.launching()
        qprocess.start(self.process.program, self.process.arguments)

    def stop(self, timeout_ms: int = 5000) -> None:
        """Terminate the server (kill it if it does not end within ``timeout_ms``)."""
        if not self.is_running:
            return
        self.process.stopping()
        self.qprocess.terminate()
        if not self.qprocess.waitForFinished(timeout_ms):
            self.qprocess.kill()
            self.qprocess.waitForFinished(2000)

    # -- QProcess slots -----------------------------------------------------------------------------
    def _on_output(self) -> None:
        if self.qprocess is None:
            return
        text = self.qprocess.readAllStandardOutput().data().decode("utf-8", "replace")
        self.log.emit(text.rstrip("\n"))
        self.process.output_received(text)

    def _on_error(self, error) -> None:
        """QProcess.errorOccurred: FailedToStart never emits finished, so this ends "Starting…"."""
        self.process.error_occurred(error)

    def _on_finished(self, exit_code, exit_status) -> None:
        import qt  # Slicer's PythonQt

        self.log.emit(f"[server exited with code {exit_code}]")
        self.process.finished(exit_code, crashed=exit_status == qt.QProcess.CrashExit)
