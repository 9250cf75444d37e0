"""Shared helper of the kill -9 tests: start a real subprocess and SIGKILL it at a random moment."""
import signal
import subprocess
import time

from metaopt.tracking import read_metrics


def start_and_kill(cmd, env, metrics_path, rng, new_rows=1, max_delay=0.3, timeout=60) -> bool:
    """Run `cmd`, wait until it has logged `new_rows` more rows to `metrics_path`, then SIGKILL it after a
    random delay in [0, max_delay] s. Returns True if it was killed, False if it finished first."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen, deadline = len(read_metrics(metrics_path)), time.time() + timeout
    while time.time() < deadline and proc.poll() is None and len(read_metrics(metrics_path)) < seen + new_rows:
        time.sleep(0.01)
    time.sleep(rng.uniform(0, max_delay))
    killed = proc.poll() is None
    if killed:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    return killed
