"""`make deploy-local N=3`: the production layout on one machine, with real processes.

One SuperLink (TLS, SuperNode authentication) and N SuperNodes on loopback, each SuperNode with its
own port, its own key and its own merchant file given in its node config; then the app is run with
`flwr run . <name> --stream`. The platform side (SuperLink, ServerApp) is never told where the data
lies. Everything goes into a git-ignored work folder (`.deploy/` by default): merchant files, a CA,
the SuperLink's certificate, the SuperNodes' keys, a private FLWR_HOME, logs and the run's outputs.
Every process started here is stopped by its id on exit, also on failure, Ctrl-C or SIGTERM.

    python -m launch.deploy_local --nodes 3 [--insecure] [--work .deploy] [hydra overrides...]

`LocalDeployment` is the same orchestration as a library: the deployment tests drive it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from core.config import compose_config, to_plain
from core.errors import InputError
from data.partition import Partition, partition_table, read_manifest
from launch.simulation import FLOWER_ENV

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CONNECTION = "deploy"  # the SuperLink's name in this deployment's FLWR_HOME/config.toml
# Small enough to finish in a few minutes on 2 cores, big enough that every head learns something.
DEFAULT_OVERRIDES = ("data.synthetic.n_rows=12000", "data.synthetic.n_users=600", "data.synthetic.n_items=200",
                     "federation.rounds=3", "device=cpu")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write_private_key(key: ec.EllipticCurvePrivateKey, path: Path, fmt: serialization.PrivateFormat) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption()))
    path.chmod(0o600)


def make_certificates(folder: Path) -> dict[str, Path]:
    """A throw-away CA and the SuperLink's certificate for 127.0.0.1 and localhost."""
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "merchant-fl local CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=7))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    server_key = ec.generate_private_key(ec.SECP384R1())
    server = (x509.CertificateBuilder()
              .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
              .issuer_name(ca_name).public_key(server_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=7))
              .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                          x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                             critical=False)
              .sign(ca_key, hashes.SHA256()))
    paths = {"ca": folder / "ca.crt", "cert": folder / "server.pem", "key": folder / "server.key"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    _write_private_key(server_key, paths["key"], serialization.PrivateFormat.TraditionalOpenSSL)
    return paths


def make_node_key(path: Path) -> Path:
    """An ECDSA (NIST P-384) key pair in OpenSSH format, as `ssh-keygen -t ecdsa -b 384` writes it;
    returns the public key's path (what the platform registers)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    _write_private_key(key, path, serialization.PrivateFormat.OpenSSH)
    public = path.with_suffix(".pub")
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                     serialization.PublicFormat.OpenSSH) + b"\n")
    return public


class LocalDeployment:
    """A SuperLink and SuperNodes on loopback, started as real processes, each stopped by its id on close."""

    def __init__(self, work: Path, secure: bool = True) -> None:
        self.work = Path(work).resolve()
        self.secure = secure
        self.port = free_port()
        self.logs = self.work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.flwr_home = self.work / "flwr-home"
        self.env = {**os.environ, **FLOWER_ENV, "FLWR_HOME": str(self.flwr_home),
                    "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
        self.env.pop("PYTHONPATH", None)
        self.processes: dict[str, subprocess.Popen] = {}
        self.certificates = make_certificates(self.work / "certificates") if secure else {}

    # -- processes -------------------------------------------------------------------------------
    def _start(self, name: str, command: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        log = (self.logs / f"{name}.log").open("wb")
        # A session of its own: the ServerApp/ClientApp processes Flower spawns share its group id,
        # so stopping it by that id stops them too.
        process = subprocess.Popen(command, cwd=self.work, env=env or self.env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        self.processes[name] = process
        return process

    def stop(self, name: str, sig: int = signal.SIGTERM, grace_s: float = 10.0) -> None:
        """Stop one started process (and the processes it spawned) by its id."""
        process = self.processes.pop(name, None)
        if process is None:
            return
        for signum in (sig, signal.SIGKILL):
            try:
                os.killpg(process.pid, signum)
            except ProcessLookupError:
                pass
            try:
                process.wait(timeout=grace_s)
                break
            except subprocess.TimeoutExpired:
                continue
        try:  # children left behind in the group after the leader exited
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def close(self) -> None:
        for name in list(self.processes)[::-1]:
            self.stop(name)

    def __enter__(self) -> "LocalDeployment":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- the platform ---------------------------------------------------------------------------
    def start_superlink(self, timeout_s: float = 60.0) -> None:
        tls = ["--ssl-ca-certfile", str(self.certificates["ca"]), "--ssl-certfile", str(self.certificates["cert"]),
               "--ssl-keyfile", str(self.certificates["key"]), "--enable-supernode-auth"] if self.secure else ["--insecure"]
        self._start("superlink", [str(BIN / "flower-superlink"), *tls, "--host", "127.0.0.1", "--port", str(self.port),
                                  "--disable-runtime-dependency-installation"])
        self._write_connection()
        deadline = time.monotonic() + timeout_s
        while self._listed() is None:
            if self.processes["superlink"].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the SuperLink did not come up; see {self.logs / 'superlink.log'}")
            time.sleep(0.5)

    def _write_connection(self) -> None:
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        security = f'root-certificates = "{self.certificates["ca"]}"' if self.secure else "insecure = true"
        (self.flwr_home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "127.0.0.1:{self.port}"\n{security}\n')

    def _flwr(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "flwr"), *args], cwd=ROOT, env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def _listed(self) -> dict[str, Any] | None:
        """`flwr ls --format json`'s document, None when the SuperLink did not answer. Its exit code is 0
        either way (the JSON says `"success": false`), so readiness cannot be read from it."""
        listed = self._flwr("ls", "--format", "json")
        try:
            document = json.loads(listed.stdout)
        except json.JSONDecodeError:
            return None
        return document if listed.returncode == 0 and document.get("success") is True else None

    def register(self, public_key: Path) -> None:
        """The platform admits a merchant's SuperNode by its public key (the key itself stays with the merchant)."""
        done = self._flwr("supernode", "register", str(public_key), CONNECTION)
        if done.returncode != 0:
            raise RuntimeError(f"registering {public_key.name} failed: {(done.stdout + done.stderr).strip()[-500:]}")

    # -- the merchants ----------------------------------------------------------------------------
    def start_node(self, name: str, data_path: Path, merchant_id: str | None = None, key: Path | None = None
                   ) -> subprocess.Popen:
        """A merchant's SuperNode: its own port, key, data file and local cache."""
        node_config = f'data-path="{data_path}"' + (f' merchant-id="{merchant_id}"' if merchant_id else "")
        security = (["--root-certificates", str(self.certificates["ca"])] + (["--auth-supernode-private-key", str(key)]
                    if key else [])) if self.secure else ["--insecure"]
        env = {**self.env, "MERCHANT_FL_CACHE": str(self.work / "nodes" / name / "cache")}
        return self._start(name, [str(BIN / "flower-supernode"), *security, "--superlink", f"127.0.0.1:{self.port}",
                                  "--port", str(free_port()), "--node-config", node_config],
                           env=env)

    def activated(self, name: str, timeout_s: float = 60.0) -> bool:
        """Whether a started SuperNode was admitted by the SuperLink (False: it exited, e.g. code 305)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if "SuperNode ID:" in (self.logs / f"{name}.log").read_text(errors="replace"):
                return True
            if self.processes[name].poll() is not None:
                return False
            time.sleep(0.5)
        return False

    def restart_node(self, name: str, data_path: Path, key: Path | None, timeout_s: float = 180.0) -> None:
        """Start a merchant's SuperNode again, retrying as a supervisor would: the SuperLink refuses a
        key whose previous session it has not yet marked offline (two missed 30 s heartbeats)."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.start_node(name, data_path, key=key)
            if self.activated(name):
                return
            self.stop(name)
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} was not admitted within {timeout_s:.0f} s; see {self.logs / (name + '.log')}")
            time.sleep(5)

    def add_merchant(self, name: str, data_path: Path, merchant_id: str | None = None) -> subprocess.Popen:
        """Key, registration (when secure) and start of one merchant's SuperNode."""
        key = self.work / "keys" / name
        if self.secure:
            self.register(key.with_suffix(".pub") if key.with_suffix(".pub").is_file() else make_node_key(key))
        return self.start_node(name, data_path, merchant_id, key if self.secure else None)

    # -- the run --------------------------------------------------------------------------------
    def start_run(self, overrides: Sequence[str], output_dir: Path) -> subprocess.Popen:
        """`flwr run . <name> --stream` in the background; its output goes to logs/flwr-run.log."""
        run_config = f'overrides="{" ".join(overrides)}" output-dir="{output_dir}"'
        return self._start("flwr-run", [str(BIN / "flwr"), "run", str(ROOT), CONNECTION, "--stream",
                                        "--run-config", run_config])

    def run_output(self) -> str:
        path = self.logs / "flwr-run.log"
        return path.read_text(errors="replace") if path.is_file() else ""

    def wait_run(self, output_dir: Path, timeout_s: float = 1200.0) -> tuple[bool, str]:
        """(finished, output). `flwr run --stream` exits 0 even for a failed run, so success is the
        ServerApp's metrics.json (written last) and a run status other than failed."""
        try:
            self.processes["flwr-run"].wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pass
        finally:
            self.stop("flwr-run")
        finished = (Path(output_dir) / "metrics.json").is_file() and self.last_run_status() != "finished:failed"
        return finished, self.run_output()

    def last_run_status(self) -> str | None:
        """`flwr ls` status ("finished:completed", "finished:failed", ...) of the run started here."""
        started = re.search(r"Successfully started run (\d+)", self.run_output())
        runs = (self._listed() or {}).get("runs", [])
        ours = [r for r in runs if started and str(r.get("run-id")) == started.group(1)] or runs[-1:]
        return str(ours[0].get("status")) if ours else None


def merchant_files(overrides: Sequence[str], n_nodes: int, folder: Path) -> list[Partition]:
    """The default data (or `data=table`) split into one file per merchant: the merchants' own files."""
    cfg = to_plain(compose_config([f"data.synthetic.n_merchants={n_nodes}", *overrides]))
    return read_manifest(partition_table(cfg["data"], out_dir=folder))


def without_tracebacks(output: str) -> str:
    """The run's stream as a user reads it: Flower logs a failed ServerApp's traceback; the app's own
    one-line error (`merchant-fl: error: ...`) says what went wrong."""
    kept, in_traceback = [], False
    for line in output.splitlines():
        if line.startswith("Traceback (most recent call last):"):
            in_traceback = True
        elif in_traceback and line and not line.startswith(" "):
            in_traceback = False  # the exception's own line closes the traceback
            continue
        if not in_traceback:
            kept.append(line)
    return "\n".join(kept) + "\n"


def app_error(output: str) -> str | None:
    """The ServerApp's one-line error, if it logged one."""
    marker = "merchant-fl: error: "
    lines = [line.split(marker, 1)[1].strip() for line in output.splitlines() if marker in line]
    return lines[-1] if lines else None


def _exit_on_signal(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through `with LocalDeployment`, which stops every process


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for the run (after the small defaults)")
    parser.add_argument("--nodes", type=int, default=3, help="SuperNodes, one per merchant")
    parser.add_argument("--work", default=str(ROOT / ".deploy"), help="git-ignored folder for everything")
    parser.add_argument("--insecure", action="store_true", help="no TLS, no SuperNode authentication")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGINT, _exit_on_signal)
    work = Path(args.work).resolve() / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    overrides = [*DEFAULT_OVERRIDES, *args.overrides]
    try:
        merchants = merchant_files(overrides, args.nodes, work / "merchants")
        overrides.append(f"federation.min_nodes={len(merchants)}")  # data=table: one node per merchant in it
        with LocalDeployment(work, secure=not args.insecure) as deployment:
            deployment.start_superlink()
            print(f"SuperLink on 127.0.0.1:{deployment.port} ({'insecure' if args.insecure else 'TLS, SuperNode auth'})",
                  flush=True)
            for k, merchant in enumerate(merchants):
                deployment.add_merchant(f"node-{k}", merchant.path)
                print(f"SuperNode node-{k}: merchant {merchant.merchant_id}, data-path={merchant.path}", flush=True)
            output_dir = work / "outputs"
            deployment.start_run(overrides, output_dir)
            finished, output = deployment.wait_run(output_dir)
            print(without_tracebacks(output)[-4000:], end="", flush=True)
    except InputError as exc:
        print(f"deploy-local: error: {exc}", file=sys.stderr)
        return 2
    if not finished:
        why = app_error(output) or "the run did not finish"
        print(f"deploy-local: error: {why}; logs in {work / 'logs'}", file=sys.stderr)
        return 1
    print(f"deploy-local: finished; results in {output_dir} (metrics.json), logs in {work / 'logs'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
