"""OCI hooks: run each with the container state on stdin, honouring its timeout."""
import os
import select
import time

from crate_runc import Error, fastjson, signals


def run_one(hook, state_json, phase, index):
    """Run one hook to completion; Error with its exit status and output when it fails."""
    path = hook["path"]
    args = hook.get("args") or [path]
    env = hook.get("env") or []
    timeout = hook.get("timeout")
    stdin_r, stdin_w = os.pipe()
    out_r, out_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the hook: state on stdin, stdout and stderr captured together
        try:
            os.dup2(stdin_r, 0)
            os.dup2(out_w, 1)
            os.dup2(out_w, 2)
            os.closerange(3, 65536)
            os.execve(path, args, dict(e.split("=", 1) for e in env if "=" in e))
        except OSError as e:
            os.write(2, f"exec {path}: {e.strerror}".encode())
        os._exit(127)
    os.close(stdin_r)
    os.close(out_w)
    try:
        os.write(stdin_w, state_json.encode())
    except BrokenPipeError:
        pass  # the hook need not read its stdin
    os.close(stdin_w)
    output = b""
    deadline = time.monotonic() + timeout if timeout else None
    eof = False
    while True:
        if not eof and select.select([out_r], [], [], 0.05)[0]:
            chunk = os.read(out_r, 65536)
            output = (output + chunk)[-4096:]
            eof = not chunk
            continue
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if deadline is not None and time.monotonic() >= deadline:
            os.kill(pid, signals.SIGKILL)
            os.waitpid(pid, 0)
            os.close(out_r)
            raise Error(f"{phase} hook #{index} ({path}) timed out after {timeout}s")
        if eof:
            time.sleep(0.005)
    while not eof and select.select([out_r], [], [], 0)[0]:
        chunk = os.read(out_r, 65536)
        output = (output + chunk)[-4096:]
        eof = not chunk
    os.close(out_r)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        what = f"exit status {code}" if code > 0 else f"killed by signal {-code}"
        text = output.decode(errors="replace").strip()
        raise Error(f"{phase} hook #{index} ({path}) failed: {what}" + (f": {text}" if text else ""))


def run(config, phase, state):
    """Run the hooks of `phase` in order; the first failure raises Error."""
    hooks = config.get("hooks", {}).get(phase, [])
    if not hooks:
        return
    state_json = fastjson.dumps(state)
    for index, hook in enumerate(hooks):
        run_one(hook, state_json, phase, index)
