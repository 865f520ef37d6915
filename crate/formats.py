"""How crate prints things: docker's tables, durations and statuses."""
import calendar
import time

from crate.containers import parse_time


def command_text(container, full):
    text = " ".join(container.data.get("config", {}).get("args") or [])
    if not full and len(text) > 20:
        text = text[:19] + "…"
    return f'"{text}"'


def duration(seconds):
    """docker's human durations (go-units HumanDuration)."""
    seconds = max(seconds, 0)
    if seconds < 1:
        return "Less than a second"
    if seconds < 2:
        return "1 second"
    if seconds < 60:
        return f"{int(seconds)} seconds"
    minutes = seconds / 60
    if minutes < 2:
        return "About a minute"
    if minutes < 60:
        return f"{int(minutes)} minutes"
    hours = minutes / 60
    if hours < 2:
        return "About an hour"
    if hours < 48:
        return f"{int(hours)} hours"
    if hours < 24 * 14:
        return f"{int(hours / 24)} days"
    if hours < 24 * 60:
        return f"{int(hours / 24 / 7)} weeks"
    if hours < 24 * 365 * 2:
        return f"{int(hours / 24 / 30)} months"
    return f"{int(hours / 24 / 365)} years"


def ago(seconds):
    return f"{duration(seconds)} ago"


def status_text(container, now):
    st = container.state
    status = container.status
    if status == "running":
        started = parse_time(st.get("started_at"))
        return f"Up {duration(now - started)}" if started else "Up"
    if status == "exited":
        finished = parse_time(st.get("finished_at"))
        code = st.get("exit_code")
        return f"Exited ({'?' if code is None else code}) {ago(now - finished) if finished else ''}".rstrip()
    return {"created": "Created", "starting": "Starting", "creating": "Creating", "removing": "Removal In Progress",
            "dead": "Dead"}.get(status, status.capitalize())


def print_table(rows):
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("   ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip())


def image_created(created):
    if not created:
        return ""
    try:
        stamp = calendar.timegm(time.strptime(created[:19], "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return created
    return ago(time.time() - stamp)
