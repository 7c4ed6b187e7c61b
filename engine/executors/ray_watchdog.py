"""``python -m engine.executors.ray_watchdog PID``: end the Ray processes of a private cluster once the
process that started it (PID, the driver) is gone, however it ended (SIGKILL included).

Ray ties the head processes it starts to the driver, but the agents the raylet starts (dashboard agent,
runtime-env agent) outlive a killed driver. While the driver lives, this process notes every Ray process
below it (each with its start time, so a reused pid is never touched); when the driver is gone it ends
those still running (SIGTERM, then SIGKILL) and exits. Imports neither Ray nor torch.
"""

from __future__ import annotations

import os
import sys
import time

import psutil

POLL_S = 1.0
GRACE_S = 3.0


def _is_ray_process(process: psutil.Process) -> bool:
    """Ray's own processes: its binaries and scripts live under a ``ray`` folder; workers and agents
    rename themselves ``ray::Something``."""
    try:
        words = " ".join(process.cmdline()) or process.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    return "ray::" in words or "/ray/" in words or "raylet" in words or "gcs_server" in words


def ray_descendants(driver: psutil.Process) -> dict[int, float]:
    """pid -> start time of every Ray process below ``driver`` (this watchdog excluded)."""
    found: dict[int, float] = {}
    try:
        children = driver.children(recursive=True)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return found
    for child in children:
        if child.pid != os.getpid() and _is_ray_process(child):
            try:
                found[child.pid] = child.create_time()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
    return found


def still_running(noted: dict[int, float]) -> list[psutil.Process]:
    """The noted processes that still run (same pid and start time, not a zombie)."""
    alive = []
    for pid, started in noted.items():
        try:
            process = psutil.Process(pid)
            if process.create_time() == started and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return alive


def end(processes: list[psutil.Process]) -> None:
    for process in processes:
        try:
            process.terminate()
        except psutil.Error:
            continue
    _gone, left = psutil.wait_procs(processes, timeout=GRACE_S)
    for process in left:
        try:
            process.kill()
        except psutil.Error:
            continue


def _alive(driver: psutil.Process) -> bool:
    try:  # is_running also compares the start time: a reused pid is another process
        return driver.is_running() and driver.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def watch(driver_pid: int) -> None:
    try:
        driver = psutil.Process(driver_pid)
    except psutil.Error:
        return
    noted: dict[int, float] = {}
    while _alive(driver):
        noted.update(ray_descendants(driver))
        time.sleep(POLL_S)
    end(still_running(noted))


if __name__ == "__main__":
    watch(int(sys.argv[1]))
