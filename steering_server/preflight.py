"""Start-up checks of `steering-server` flags, run before anything heavy loads: each mistake a user can make on the
command line becomes one `cannot start: <what> (try <what to do>)` line and exit code 2, instead of a traceback
from deep inside transformers, torch or grpc minutes into loading a model.

Only what the flags name is checked here (paths, files, the device); what the files hold is checked where they
are read, and those errors are reported the same way (cli.py).
"""

from __future__ import annotations

import errno
import socket
import ssl
from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "StartupError",
    "check_device",
    "check_direction_files",
    "check_distinct_ports",
    "check_file",
    "check_model",
    "check_port",
    "check_tls",
    "one_line",
    "read_token",
]

# A directory needs one of these for AutoTokenizer to load it (fast tokenizers, sentencepiece, BPE vocabularies).
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")
_WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json")


class StartupError(Exception):
    """A flag that cannot work: `message` says what is wrong (flag first), `hint` what to try instead."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} (try {self.hint})" if self.hint else self.message


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (transformers and grpc write paragraphs)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def check_model(model: str | None, flag: str = "--model") -> None:
    """A local model directory must hold a config, weights and tokenizer files; a hub id is left to transformers
    (a path-like name that does not exist is refused here: it is not a hub id)."""
    if model is None:
        return
    path = Path(model).expanduser()
    if not path.exists():
        if path.is_absolute() or model.startswith((".", "~")) or model.count("/") > 1:
            raise StartupError(f"{flag} {model}: no such directory", "the directory save_pretrained() wrote")
        return  # a hub id such as org/name
    if not path.is_dir():
        raise StartupError(f"{flag} {model}: is a file, not a model directory", "the directory that holds config.json")
    try:
        names = {p.name for p in path.iterdir()}
    except OSError as exc:
        raise StartupError(f"{flag} {model}: cannot read the directory: {exc.strerror or exc}") from exc
    if "config.json" not in names:
        raise StartupError(f"{flag} {model}: no config.json, so not a Hugging Face model directory",
                           "the directory save_pretrained() wrote, or a hub id")
    if not any(any(path.glob(g)) for g in _WEIGHT_GLOBS):
        raise StartupError(f"{flag} {model}: no weights (*.safetensors or pytorch_model*.bin)",
                           "model.save_pretrained(DIR)")
    if not names.intersection(_TOKENIZER_FILES):
        raise StartupError(f"{flag} {model}: no tokenizer files ({', '.join(_TOKENIZER_FILES[:2])}, ...)",
                           "tokenizer.save_pretrained(DIR) into the model's directory")


def check_file(path: str, flag: str, hint: str = "") -> bytes:
    """The bytes of a file a flag names, or a StartupError saying why not."""
    p = Path(path).expanduser()
    if not p.exists():
        raise StartupError(f"{flag} {path}: no such file", hint)
    if not p.is_file():
        raise StartupError(f"{flag} {path}: not a file", hint)
    try:
        return p.read_bytes()
    except OSError as exc:
        raise StartupError(f"{flag} {path}: cannot read it: {exc.strerror or exc}", hint) from exc


def check_direction_files(directions: Iterable[tuple[str, str]], flag: str = "--direction") -> None:
    """Each (name, spec) names a path that exists: a file, or an SAE-Lens directory (spec `PATH[,key=value...]`,
    direction_imports.split_direction_spec; what the file holds is checked when it is loaded)."""
    for name, spec in directions:
        path = spec.split(",", 1)[0]
        if not Path(path).expanduser().exists():
            shown = f"{name}={spec}" if name else spec
            raise StartupError(f"{flag} {shown}: no such file", "the path of a direction file (docs/directions.md)")


def check_tls(cert: str | None, key: str | None, client_ca: str | None) -> None:
    """PEM files that parse, and a key that belongs to its certificate (grpc would only fail at the first
    handshake, with a message that names neither file)."""
    if bool(cert) != bool(key) or (client_ca and not cert):
        raise StartupError("--tls-cert: give --tls-cert and --tls-key together (and for --tls-client-ca)",
                           "--tls-cert server.pem --tls-key server.key")
    if not cert or not key:
        return
    for path, flag, marker in ((cert, "--tls-cert", b"CERTIFICATE"), (key, "--tls-key", b"PRIVATE KEY"),
                               (client_ca, "--tls-client-ca", b"CERTIFICATE")):
        if path is None:
            continue
        data = check_file(path, flag, "a PEM file")
        if b"-----BEGIN " not in data or marker not in data:
            raise StartupError(f"{flag} {path}: not a PEM {marker.decode().lower()}", "a PEM file (-----BEGIN ...)")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise StartupError(f"--tls-key {key}: does not match --tls-cert {cert} ({exc.reason or exc})",
                           "the key the certificate was made for") from exc
    if client_ca:
        try:
            ssl.create_default_context(cafile=client_ca)
        except ssl.SSLError as exc:
            raise StartupError(f"--tls-client-ca {client_ca}: {exc.reason or exc}", "the CA's PEM certificate") from exc


def read_token(path: str, flag: str) -> str:
    token = check_file(path, flag, "a file holding the token").decode(errors="replace").strip()
    if not token:
        raise StartupError(f"{flag} {path} is empty", "a file holding the token")
    return token


def check_device(device: str | None) -> None:
    """The device exists for this torch (a CPU-only build asked for cuda fails 50 lines deep in .to())."""
    if device is None or device == "cpu":
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise StartupError(f"--device {device}: {one_line(exc)}", "--device cpu, cuda or cuda:N") from exc
    if dev.type == "cuda":
        if torch.version.cuda is None:
            raise StartupError(f"--device {device}: this torch ({torch.__version__}) was built without CUDA",
                               "--device cpu, or install a CUDA build of torch: scripts/setup.sh keeps a machine's own")
        if not torch.cuda.is_available():
            raise StartupError(f"--device {device}: torch sees no CUDA device", "--device cpu, or check nvidia-smi")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise StartupError(f"--device {device}: this machine has {count} CUDA device(s)",
                               f"--device cuda:0 to cuda:{count - 1}")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise StartupError(f"--device {device}: MPS is not available here", "--device cpu")


def check_port(host: str, port: int, flag: str = "--port") -> None:
    """The port is free on every address `host` resolves to, bound the way grpc binds (SO_REUSEADDR), so a busy
    port is one line before the model loads (grpc itself logs a C-level error line first)."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartupError(f"--host {host}: cannot resolve it ({exc.strerror})", "an address, e.g. 127.0.0.1") from exc
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise StartupError(f"{flag} {port}: {host}:{port} is in use by another process",
                                       "another --port, or --port 0 for a free one") from exc
                if exc.errno == errno.EADDRNOTAVAIL:
                    raise StartupError(f"--host {host}: not an address of this machine",
                                       "127.0.0.1 or 0.0.0.0") from exc
                raise StartupError(f"{flag} {port}: cannot listen on {host}:{port}: {exc.strerror or exc}",
                                   "another --port, or --port 0 for a free one") from exc


def check_distinct_ports(ports: Iterable[tuple[str, int]]) -> None:
    """No two listeners (gRPC, metrics, HTTP) are given the same port: each one is free before the model loads,
    so check_port alone lets them collide only once the second binds, after the load."""
    seen: dict[int, str] = {}
    for flag, port in ports:
        if not port:
            continue
        if port in seen:
            raise StartupError(f"{flag} {port}: {seen[port]} is {port} too; each listener needs its own port",
                               f"another {flag}")
        seen[port] = flag
