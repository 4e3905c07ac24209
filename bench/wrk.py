"""Run `wrk` (the C HTTP load generator, Debian package `wrk`) and parse its --latency report."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


@dataclass
class WrkResult:
    clients: int
    requests: int
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip())
    if match is None:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(match.group(1)) * UNITS[match.group(2)]


def parse(output: str, clients: int) -> WrkResult:
    """The numbers of one `wrk --latency` run."""
    percentile = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", output, re.MULTILINE))
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    total = re.search(r"(\d+) requests in", output)
    if rps is None or total is None or not {"50", "99"} <= set(percentile):
        raise RuntimeError(f"cannot parse wrk output:\n{output}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    return WrkResult(
        clients=clients,
        requests=int(total.group(1)),
        requests_per_second=float(rps.group(1)),
        p50_ms=_ms(percentile["50"]),
        p99_ms=_ms(percentile["99"]),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(x) for x in errors.groups()) if errors else 0,
    )


def lua_script(method: str, headers: dict[str, str], body: str | None) -> str:
    """A wrk script setting the method, headers and body of every request."""
    lines = [f'wrk.method = "{method}"']
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    if body is not None:
        lines.append(f"wrk.body = [[{body}]]")
    return "\n".join(lines) + "\n"


def run(
    url: str,
    clients: int,
    seconds: float,
    headers: dict[str, str],
    method: str = "GET",
    body: str | None = None,
) -> WrkResult:
    """`clients` connections (at most 2 wrk threads: the machine has 2 cores) for `seconds`."""
    binary = shutil.which("wrk")
    if binary is None:
        raise RuntimeError("wrk is not installed (apt-get install -y wrk)")
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "request.lua"
        script.write_text(lua_script(method, headers, body))
        cmd = [binary, "-t", str(min(clients, 2)), "-c", str(clients), "-d", f"{seconds:g}s", "--latency"]
        cmd += ["--timeout", "10s", "-s", str(script), url]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed: {out.stderr}")
    return parse(out.stdout, clients)
