"""Signal names and numbers (Linux), without importing the signal module (it costs ~3 ms of start-up)."""

NUMBERS = {
    "HUP": 1, "INT": 2, "QUIT": 3, "ILL": 4, "TRAP": 5, "ABRT": 6, "IOT": 6, "BUS": 7, "FPE": 8, "KILL": 9,
    "USR1": 10, "SEGV": 11, "USR2": 12, "PIPE": 13, "ALRM": 14, "TERM": 15, "STKFLT": 16, "CHLD": 17,
    "CLD": 17, "CONT": 18, "STOP": 19, "TSTP": 20, "TTIN": 21, "TTOU": 22, "URG": 23, "XCPU": 24,
    "XFSZ": 25, "VTALRM": 26, "PROF": 27, "WINCH": 28, "IO": 29, "POLL": 29, "PWR": 30, "SYS": 31,
}
SIGRTMIN, SIGRTMAX = 34, 64
SIGKILL, SIGTERM, SIGCHLD, SIGWINCH, SIGSTOP, SIGCONT = 9, 15, 17, 28, 19, 18


def parse(text):
    """'KILL', 'SIGKILL', 'kill', '9' or 'RTMIN+3' -> number; ValueError naming the bad signal."""
    value = text.strip()
    if value.isdigit():
        number = int(value)
        if 0 < number <= SIGRTMAX:
            return number
        raise ValueError(f"invalid signal {text!r}: numbers go from 1 to {SIGRTMAX}")
    name = value.upper()
    if name.startswith("SIG"):
        name = name[3:]
    if name in NUMBERS:
        return NUMBERS[name]
    for base, origin, sign in (("RTMIN", SIGRTMIN, 1), ("RTMAX", SIGRTMAX, -1)):
        if name == base:
            return origin
        if name.startswith(base + ("+" if sign > 0 else "-")) and name[len(base) + 1:].isdigit():
            number = origin + sign * int(name[len(base) + 1:])
            if SIGRTMIN <= number <= SIGRTMAX:
                return number
    raise ValueError(f"invalid signal {text!r}; use a name such as TERM or KILL, or a number")
