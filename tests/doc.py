#!/usr/bin/env python3
"""The man page, doc/xwebhook.1, against --help of both builds: every
option and subcommand that either --help lists has its own entry in the
page, and the page has no entry --help does not list; the TLS build's own
are marked as such; each default --help names is the page's; and mandoc's
lint, mandoc and man(1) take the page without a word. Usage:

    doc.py PLAIN_BINARY TLS_BINARY

The last line is 'doc: N passed, N failed'.
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as it  # noqa: E402  (what every suite shares)

PLAIN, TLS = it.arg(1), it.arg(2)
README = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "README.md")
PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "doc", "xwebhook.1")

test = it.test


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


# ---- What --help says ----

def help_text(binary):
    r = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stderr == "", "%s --help: exit %d, stderr %r" % (binary, r.returncode, r.stderr)
    return r.stdout


def help_options(text):
    """{option: its help text} for each option line: '  -x, --name ...' or
    '      --name ...' (continuation lines are indented further and start
    with no dash, and the usage lines name options only beside commands)."""
    opts = {}
    current = None
    for line in text.splitlines():
        m = re.match(r"^ {2,6}(?:(-[A-Za-z]), +)?(--[a-z][a-z0-9-]*)\b(.*)$", line)
        if m:
            current = m.group(3)
            for name in (m.group(1), m.group(2)):
                if name:
                    opts[name] = current
            last = [n for n in (m.group(1), m.group(2)) if n]
        elif current is not None and re.match(r"^ {20,}\S", line):
            for name in last:
                opts[name] += " " + line.strip()
        else:
            current = None
    return opts


def help_commands(text):
    """{command: True if the help lists it under the TLS build's heading}."""
    cmds = {}
    tls = False
    prev = ""
    for line in text.splitlines():
        # A heading (lines at the margin, after a blank line) starts a
        # block; the one that names the TLS build marks the commands under it.
        if line and not line.startswith((" ", "usage:")):
            tls = "(TLS build)" in line or (tls and prev != "" and not prev.startswith(" "))
        prev = line
        m = re.match(r"^(?:usage:)? +xwebhook ([a-z][a-z-]*)\b", line)
        if m:
            cmds[m.group(1)] = tls
    return cmds


def help_defaults(opts):
    """{option: the value its help line gives as '(default VALUE; ...)'}."""
    out = {}
    for name, text in opts.items():
        m = re.search(r"\(default ([^;)]+)", text)
        if m and name.startswith("--"):
            out[name] = m.group(1).strip()
    return out


# ---- What the page says ----

def sections(src):
    """{section name: [its source lines]}, and per section, the .Ss
    subsection each line is in."""
    out = {}
    name = None
    for line in src.splitlines():
        if line.startswith(".Sh "):
            name = line[4:].strip()
            out[name] = []
        elif name is not None:
            out[name].append(line)
    return out


def page_entries(lines, macro):
    """[(name, subsection, entry source)] for each '.It' line of a list in
    lines that holds `macro` (Fl or Cm): each flag of the line, with the
    .Ss it is under and its text up to the next .It, .El or .Ss."""
    entries = []
    ss = ""
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith(".Ss "):
            ss = line[4:].strip()
        if line.startswith(".It "):
            body = [line]
            j = i + 1
            while j < len(lines) and lines[j] != ".It" and not lines[j].startswith((".It ", ".El", ".Ss ")):
                body.append(lines[j])
                j += 1
            words = line.split()
            for k, w in enumerate(words[:-1]):
                if w == macro:
                    arg = words[k + 1].replace("\\-", "-").replace("\\&", "")
                    name = "-" + arg if macro == "Fl" else arg
                    entries.append((name, ss, "\n".join(body)))
        i += 1
    return entries


def check_page(src, plain_help, tls_help):
    """Every disagreement between the page's source and the two --help
    texts, one line each, naming the option or command."""
    problems = []
    secs = sections(src)
    for need in ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "COMMANDS", "ENVIRONMENT", "FILES",
                 "EXIT STATUS", "EXAMPLES", "SEE ALSO", "STANDARDS"):
        if need not in secs:
            problems.append("the page has no %s section" % need)
    if problems:
        return problems

    plain_opts, tls_opts = help_options(plain_help), help_options(tls_help)
    # A parser that finds nothing would pass everything: it must find the
    # options every build has had since the start.
    for must in ("--listen", "-l", "--path", "--output", "--help", "-V", "--cert", "--acme"):
        assert must in tls_opts, "the --help parser found no %s in the TLS build's --help" % must
    assert "--listen" in plain_opts and "--cert" not in plain_opts, "the plain build's --help parsed wrong"

    documented = page_entries(secs["OPTIONS"], "Fl")
    names = [n for n, _, _ in documented]
    for n in sorted(set(names)):
        if names.count(n) > 1:
            problems.append("option %s has %d entries in OPTIONS, not one" % (n, names.count(n)))
    where = {n: (ss, body) for n, ss, body in documented}
    for n in sorted(set(plain_opts) | set(tls_opts)):
        if n not in where:
            problems.append("option %s is in the %s --help but has no .It Fl entry in the man page's "
                            "OPTIONS" % (n, "plain and TLS builds'" if n in plain_opts and n in tls_opts else
                                         "plain build's" if n in plain_opts else "TLS build's"))
    for n in sorted(where):
        if n not in tls_opts:
            problems.append("option %s is in the man page's OPTIONS but not in the TLS build's --help "
                            "(stale, or misspelt?)" % n)
    for n in sorted(where):
        if n not in tls_opts:
            continue
        marked = "TLS build" in where[n][0]
        if n not in plain_opts and not marked:
            problems.append("option %s is the TLS build's only, but its man page entry is not under a "
                            "'TLS build' subsection (it is under %r)" % (n, where[n][0]))
        if n in plain_opts and marked:
            problems.append("option %s is in the plain build too, but the man page puts it under %r"
                            % (n, where[n][0]))
    for n, value in sorted(help_defaults(tls_opts).items()):
        if n in where:
            body = where[n][1].replace("\\-", "-").replace("\\&", "")
            if value not in body:
                problems.append("option %s: --help gives the default %r, which its man page entry does "
                                "not say" % (n, value))

    plain_cmds, tls_cmds = help_commands(plain_help), help_commands(tls_help)
    for must in ("crc", "check", "register", "replay"):
        assert must in tls_cmds, "the --help parser found no command %s" % must
    assert tls_cmds["replay"] and not tls_cmds["crc"], "the --help parser missed the TLS heading"
    cmds = page_entries(secs["COMMANDS"], "Cm")
    cmd_names = [n for n, _, _ in cmds]
    cmd_where = {n: ss for n, ss, _ in cmds}
    synopsis = set(re.findall(r"^\.Cm ([a-z][a-z-]*)", "\n".join(secs["SYNOPSIS"]), re.M))
    for n in sorted(set(cmd_names)):
        if cmd_names.count(n) > 1:
            problems.append("command %s has %d entries in COMMANDS, not one" % (n, cmd_names.count(n)))
    for n in sorted(set(plain_cmds) | set(tls_cmds)):
        if n not in cmd_where:
            problems.append("command %s is in --help but has no .It Cm entry in the man page's COMMANDS" % n)
        if n not in synopsis:
            problems.append("command %s is in --help but not in the man page's SYNOPSIS" % n)
    for n in sorted(set(cmd_where) | synopsis):
        if n not in tls_cmds:
            problems.append("command %s is in the man page but not in the TLS build's --help" % n)
    for n in sorted(cmd_where):
        if n in tls_cmds and tls_cmds[n] != ("TLS build" in cmd_where[n]):
            problems.append("command %s: --help %s it as the TLS build's, the man page %s" % (
                n, "lists" if tls_cmds[n] else "does not list", "does" if not tls_cmds[n] else "does not"))

    env = set(re.findall(r"^\.It Ev ([A-Z_]+)", "\n".join(secs["ENVIRONMENT"]), re.M))
    for var in sorted(set(re.findall(r"\b[A-Z][A-Z_]*_(?:SECRET|TOKEN|KEY)\b", tls_help))):
        if var not in env:
            problems.append("variable %s is in --help but has no .It Ev entry in ENVIRONMENT" % var)
    return problems


def readme_names(text):
    """(options, commands) the README gives xwebhook: those on each command
    line that runs it (./xwebhook, /usr/local/bin/xwebhook, or a code span
    or line starting with xwebhook), up to the end of that command, and
    every code span that starts with an option (`--output`)."""
    text = text.replace("\\\n", " ")
    code = re.findall(r"```[a-z]*\n(.*?)\n```", text, re.S)
    spans = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    lines = [line for c in code for line in c.split("\n")] + spans
    opts, cmds = set(), set()
    for line in lines:
        line = re.sub(r"\$\([^)]*\)", "", line)  # another command's words
        for m in re.finditer(r"(?:^|[\s=(])(?:\./|/usr/local/bin/)?xwebhook((?: [^|&;)]*)?)", line):
            if not (m.group(0).lstrip(" =(").startswith(("./", "/")) or line.startswith("xwebhook")):
                continue
            words = m.group(1).split()
            opts.update(w for w in words if re.match(r"^--?[a-zA-Z][a-z0-9-]*$", w))
            if words and re.match(r"^[a-z][a-z-]*$", words[0]):
                cmds.add(words[0])
        m = re.match(r"^(--[a-z][a-z0-9-]*)\b", line)
        if m:
            opts.add(m.group(1))
    return opts, cmds


def check_readme(text, tls_help):
    """Each option and command the README gives xwebhook that the TLS
    build's --help does not list, one line each."""
    opts, cmds = readme_names(text)
    known_opts, known_cmds = help_options(tls_help), help_commands(tls_help)
    return (["the README gives xwebhook the option %s, which --help does not list" % o
             for o in sorted(opts) if o not in known_opts] +
            ["the README gives xwebhook the command %s, which --help does not list" % c
             for c in sorted(cmds) if c not in known_cmds])


def run(argv, env=None):
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)


# ---- The tests ----

@test
def page_agrees_with_help_of_both_builds():
    problems = check_page(read(PAGE), help_text(PLAIN), help_text(TLS))
    assert not problems, "doc/xwebhook.1 and --help disagree:\n  " + "\n  ".join(problems)


@test
def mandoc_lint_says_nothing():
    r = run(["mandoc", "-T", "lint", "-W", "style", PAGE])
    assert r.returncode == 0 and r.stdout == "" and r.stderr == "", \
        "mandoc -T lint -W style doc/xwebhook.1 (exit %d):\n%s%s" % (r.returncode, r.stdout, r.stderr)


@test
def mandoc_renders_every_option():
    r = run(["mandoc", "-T", "ascii", PAGE])
    assert r.returncode == 0 and r.stderr == "", "mandoc -T ascii: exit %d: %s" % (r.returncode, r.stderr)
    text = re.sub(r".\x08", "", r.stdout)
    for n in help_options(help_text(TLS)):
        assert re.search(r"(?<![\w-])%s\b" % re.escape(n), text), "%s is not in mandoc's rendering" % n
    assert "--listen addr:port" in text, "long options do not render as --name"


@test
def man_renders_it():
    # man-db's man formats with groff: a second renderer, as users see it.
    env = dict(os.environ, MANPAGER="cat", PAGER="cat", MANWIDTH="80", LC_ALL="C.UTF-8")
    r = run(["man", "-l", PAGE], env=env)
    assert r.returncode == 0 and r.stderr == "", "man -l doc/xwebhook.1: exit %d: %s" % (r.returncode, r.stderr)
    assert "SYNOPSIS" in r.stdout and "--max-conns" in r.stdout, r.stdout[:400]


@test
def the_check_catches_a_missing_a_stale_and_a_misplaced_option():
    """The checker itself, on altered copies of the page: each change is
    named in its message, so the test above cannot pass by being blind."""
    src = read(PAGE)
    plain, tls = help_text(PLAIN), help_text(TLS)
    assert check_page(src, plain, tls) == [], "the page must agree with --help before its copies can be " \
        "told apart (see page_agrees_with_help_of_both_builds)"

    dropped = src.replace(".It Fl \\-max-conns Ar n\n", "", 1)
    assert dropped != src
    got = check_page(dropped, plain, tls)
    assert any(p.startswith("option --max-conns is in the plain and TLS builds' --help but has no") for p in got), got

    fake = src.replace(".It Fl q , Fl \\-quiet\n", ".It Fl \\-no-such-option\nFake.\n.It Fl q , Fl \\-quiet\n", 1)
    assert fake != src
    got = check_page(fake, plain, tls)
    assert got == ["option --no-such-option is in the man page's OPTIONS but not in the TLS build's --help "
                   "(stale, or misspelt?)"], got

    # --cert moved out of the TLS subsection, into the server's.
    i = src.index(".It Fl \\-cert Ar file\n")
    j = src.index(".It Fl \\-key Ar file\n")
    moved = src[:i] + src[j:]
    k = moved.index(".It Fl q , Fl \\-quiet\n")
    moved = moved[:k] + src[i:j] + moved[k:]
    got = check_page(moved, plain, tls)
    assert any(p.startswith("option --cert is the TLS build's only") for p in got), got

    default = src.replace(".Pa /webhooks/twitter .", ".Pa /webhooks/x .", 1)
    assert default != src
    got = check_page(default, plain, tls)
    assert any("option --path: --help gives the default '/webhooks/twitter'" in p for p in got), got

    nocmd = src.replace(".It Cm fmt Op Ar file\n", "", 1)
    assert nocmd != src
    got = check_page(nocmd, plain, tls)
    assert any(p.startswith("command fmt is in --help but has no .It Cm entry") for p in got), got


@test
def readme_names_only_what_help_lists():
    """The README cannot drift from the code: every option and command it
    gives xwebhook is in --help (and the checker finds them, and finds a
    stray one)."""
    text, tls = read(README), help_text(TLS)
    opts, cmds = readme_names(text)
    for must in ("--listen", "--acme", "--cert", "--secret-file", "--pid-file", "--forward", "--user"):
        assert must in opts, "the README checker found no %s in the README" % must
    for must in ("sign", "check", "register", "subscribe", "replay", "fmt"):
        assert must in cmds, "the README checker found no command %s in the README" % must
    problems = check_readme(text, tls)
    assert not problems, "README.md and --help disagree:\n  " + "\n  ".join(problems)
    stray = text.replace("./xwebhook fmt /var", "./xwebhook fmtx --no-such /var", 1)
    assert stray != text
    assert check_readme(stray, tls) == [
        "the README gives xwebhook the option --no-such, which --help does not list",
        "the README gives xwebhook the command fmtx, which --help does not list"], check_readme(stray, tls)


@test
def help_and_man_page_agree_on_sizes_and_slots():
    """--max-body's suffixes and limit, as --help and the page give them,
    are what the binary takes."""
    out = help_text(PLAIN)
    page = read(PAGE)
    assert "K, M and G suffixes" in out and ".Ql K ,\n.Ql M\nor\n.Ql G\nsuffix" in page
    assert "at most 1G" in out and "1 byte to 1G" in page
    assert "connection slots" in out and "Connection slots" in page
    for size, ok in (("1G", True), ("1g", True), ("1048576K", True), ("2G", False), ("1T", False)):
        p = subprocess.run([PLAIN, "--max-body", size, "--listen", "127.0.0.1:99999"], capture_output=True,
                           env={"TWITTER_CONSUMER_SECRET": "x"}, timeout=30)
        err = p.stderr.decode()
        assert ("bad --max-body" in err) != ok, (size, err)


@test
def lint_fails_a_broken_page():
    """The lint test has teeth: one style slip is reported."""
    d = tempfile.mkdtemp(prefix="doc-", dir=it.WORK)
    path = os.path.join(d, "xwebhook.1")
    with open(path, "w", encoding="utf-8") as f:
        f.write(read(PAGE).replace("It is one C file.\n", "It is one C file. It is small.\n", 1))
    r = run(["mandoc", "-T", "lint", "-W", "style", path])
    assert "new sentence, new line" in r.stdout + r.stderr, r.stdout + r.stderr


def main():
    passed, failed = it.run_suite()
    shutil.rmtree(it.WORK, ignore_errors=True)
    it.finish("doc", passed, failed)


if __name__ == "__main__":
    main()
