"""The two SCIM suites of scripts/compliance.sh, and their verdicts.

    python compliance.py tester BASE_URL        (the token in COMPLIANCE_TOKEN)
    python compliance.py probe REPORT.json EXIT_CODE

`tester` runs scim2-tester through scim2-cli's own client (as `scim2 test
--check-status-code --check-content-type` does) and reads its structured results;
`probe` reads the JSON report of `scim-sanity probe --json-output`. Each prints every
check, then what it accepted and why, then one summary line, and exits 1 on any
failure, on no check run, or on no Group check run.

scim2-tester must pass every check. Of the probe's failures one is accepted, by step
name and message: its step that adds a member id naming no user, which the service
refuses on purpose (see PROBE_ACCEPTED).
"""

import json
import os
import sys


def run_tester(base_url):
    from scim2_cli.session import Session
    from scim2_tester import Status
    from scim2_tester import check_server

    token = os.environ["COMPLIANCE_TOKEN"]
    session = Session(
        url=base_url,
        headers={"Authorization": f"Bearer {token}"},
        verify=True,
        schemas=None,
        resource_types=None,
        service_provider_config=None,
    )
    client = session.client
    client.check_response_status_codes = True
    client.check_response_content_type = True
    results = check_server(client)

    passed = failed = on_group = 0
    notes = []
    for r in results:
        kind = f"[{r.resource_type}] " if r.resource_type else ""
        print(f"{r.status.name} {kind}{r.title}")
        if r.reason:
            print(f"  {r.reason}")
        if r.resource_type == "Group":
            on_group += 1
        if r.status == Status.SUCCESS:
            passed += 1
            continue
        # Every check that did not succeed (error, skipped) is a problem.
        failed += 1
        notes.append(f"PROBLEM: {r.status.name} {kind}{r.title}: {r.reason}")
    if passed == 0:
        failed += 1
        notes.append("PROBLEM: no check passed")
    if on_group == 0:
        failed += 1
        notes.append("PROBLEM: no Group check ran")
    for n in notes:
        print(n)
    print(
        f"scim2-tester: {len(results)} checks, {passed} passed, {failed} failed; "
        f"{on_group} on Group"
    )
    return 1 if failed else 0


GROUP_PHASE = "Phase 3"

# (step name, message) of the probe's failures that are accepted, and why.
PROBE_ACCEPTED = {
    # The probe adds a member whose id names no user ("fake-member-id") and expects
    # 200. A group's members are users of the tenant; a request naming anything else
    # is refused with 400 and changes nothing, on purpose.
    ("PATCH /Groups/{id} add member", "Expected 200, got 400"):
        "a member that is not a user of the tenant is refused with 400, on purpose",
}


def run_probe_verdict(path, rc):
    try:
        with open(path) as f:
            results = json.load(f)["results"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"no report from the probe (exit {rc}): {exc}")
        print(f"scim-sanity: no result (exit {rc})")
        return 1

    counts, problems, notes = {}, [], []
    group_ran = 0
    for r in results:
        status = r.get("status", "?")
        counts[status] = counts.get(status, 0) + 1
        in_group = r.get("phase", "").startswith(GROUP_PHASE)
        line = f"[{status.upper():5}] {r.get('phase', '')}: {r.get('name', '')}"
        if r.get("message"):
            line += f" -- {r['message']}"
        print(line)
        if in_group and status in ("pass", "fail", "error"):
            group_ran += 1
        if status in ("fail", "error"):
            why = PROBE_ACCEPTED.get((r.get("name"), r.get("message")))
            if in_group and status == "fail" and why:
                notes.append(f"accepted: {r.get('name')}: {why}")
            else:
                problems.append(line)
        elif status == "warn" or (status == "skip" and in_group):
            problems.append(line)

    if counts.get("pass", 0) == 0:
        problems.append("no check passed")
    if group_ran == 0:
        problems.append("the Group phase ran no check")
    for n in notes:
        print(n)
    for p in problems:
        print(f"PROBLEM: {p}")
    print(
        f"scim-sanity: {len(results)} checks, {counts.get('pass', 0)} passed, "
        f"{len(problems)} failed, {len(notes)} accepted, {counts.get('skip', 0)} skipped"
        f"; {group_ran} on Group"
    )
    return 1 if problems else 0


def main(argv):
    if len(argv) == 3 and argv[1] == "tester":
        return run_tester(argv[2])
    if len(argv) == 4 and argv[1] == "probe":
        return run_probe_verdict(argv[2], argv[3])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
