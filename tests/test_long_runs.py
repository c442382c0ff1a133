"""What a user of long runs sees: resuming a finished run, progress without a terminal, the
projected wall time of a long run."""

import io
import json
import subprocess
import sys

from timesim.cli import main

# the bundled example trace: 256 iterations in chunks of 64 (its manifest.yaml)
EXAMPLE_ITERATIONS, EXAMPLE_CHUNK = 256, 64


def test_resume_of_a_finished_run_keeps_it_and_says_so(tmp_path, capsys, caplog):
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), "--threads", "1"]) == 0
    before = json.loads((out / "report.json").read_text())
    writes = sorted(p.name for p in (out / "writes").iterdir())
    capsys.readouterr()
    assert main(["run", "--out", str(out), "--threads", "1", "--resume"]) == 0
    captured = capsys.readouterr()
    assert "this run is finished (256 iterations); nothing to resume" in caplog.text
    after = json.loads((out / "report.json").read_text())
    assert after == before           # not run again (a rerun has another run.wall_s)
    assert sorted(p.name for p in (out / "writes").iterdir()) == writes
    assert "max writes per cell" in captured.out                      # the existing report
    assert f"kept      {out}/report.json" in captured.out and "wrote " not in captured.out


def test_resume_of_a_finished_run_with_other_arguments_is_refused(tmp_path, capsys):
    """A forgotten --set or --trace on --resume must not replace a finished run: exit 2 with
    one line naming what differs, the run untouched; without --resume it is replaced."""
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), "--threads", "1"]) == 0
    before = (out / "report.json").read_text()
    capsys.readouterr()
    assert main(["run", "--out", str(out), "--threads", "1", "--resume", "--set",
                 "controller.interval=512"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "made with another hwconfig" in err[0] and "--resume" in err[0]
    assert "controller.interval: 1024 -> 512" in err[0]                # the key named
    assert (out / "report.json").read_text() == before
    assert main(["run", "--out", str(out), "--threads", "1", "--trace",
                 "synth:resnet20?iterations=8", "--resume"]) == 2
    assert "made with another trace" in capsys.readouterr().err
    assert main(["run", "--out", str(out), "--threads", "1", "--set",
                 "controller.interval=512"]) == 0
    assert json.loads((out / "report.json").read_text())["policy"]["interval"] == 512


def test_resume_with_nothing_to_resume_starts_from_the_beginning(tmp_path, caplog):
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), "--threads", "1", "--resume"]) == 0
    assert "no checkpoint to resume from" in caplog.text
    assert "starting from the beginning" in caplog.text
    assert json.loads((out / "report.json").read_text())["iterations"] == 256


def test_progress_lines_without_a_terminal_after_every_chunk(tmp_path, capsys):
    assert main(["run", "--out", str(tmp_path / "r"), "--threads", "1",
                 "--progress-every", "0"]) == 0
    lines = [l for l in capsys.readouterr().err.splitlines() if "simulating:" in l]
    # one line per finished chunk except the last (the summary follows it)
    done = range(EXAMPLE_CHUNK, EXAMPLE_ITERATIONS, EXAMPLE_CHUNK)
    assert len(lines) == len(done)
    for line, d in zip(lines, done):
        assert f"simulating: {d}/{EXAMPLE_ITERATIONS} it ({100 * d / EXAMPLE_ITERATIONS:.3g}%)" \
            in line


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_progress_lines_at_a_steady_interval():
    from timesim.progress import Progress

    clock, stream = FakeClock(), io.StringIO()
    p = Progress(1000, "simulating", every=30, tty=False, clock=clock, stream=stream)
    for i in range(1, 11):            # an update every 10 s: lines at 30, 60 and 90 s
        clock.t = 10.0 * i
        p.update(100 * i - 1)
    lines = stream.getvalue().splitlines()
    assert [l.split(": ", 2)[2].split(" it")[0] for l in lines] == ["299/1,000", "599/1,000",
                                                                     "899/1,000"]
    # the rate from the first update on: (299 - 99) it in 20 s; 701 it left at 10 it/s = 70.1 s
    assert "30 s elapsed, ~1.17 min left" in lines[0] and "1.5 min elapsed" in lines[2]


def test_a_long_run_announces_its_projected_wall_time():
    from timesim.progress import Progress

    clock, stream = FakeClock(), io.StringIO()
    total = 10**12
    p = Progress(total, "simulating", every=30, tty=False, clock=clock, stream=stream)
    clock.t = 5.0
    p.update(256)                     # the first chunk: JIT warm-up, not measured
    clock.t = 6.0
    p.update(512)                     # 256 it in 1 s
    projected = 6.0 + (total - 512) / 256            # seconds
    years = projected / (365.25 * 86400)             # 123.78
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert f"projected wall time {years:.3g} years" in lines[0] and "256 it/s" in lines[0]
    p.update(768)
    assert len(stream.getvalue().splitlines()) == 1          # once


def test_a_short_run_announces_nothing():
    from timesim.progress import Progress

    clock, stream = FakeClock(), io.StringIO()
    p = Progress(1000, "simulating", every=30, tty=False, clock=clock, stream=stream)
    for t, done in ((5.0, 256), (6.0, 512), (7.0, 768), (8.0, 1000)):
        clock.t = t
        p.update(done)
    assert stream.getvalue() == ""     # projected 8 s


def test_cli_projects_a_huge_run_before_it_gets_far(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "timesim", "run", "--trace",
                             "synth:mlp-small?iterations=1e12", "--out", str(tmp_path / "r"),
                             "--threads", "1", "--checkpoint-every", "0",
                             "--progress-every", "0.5"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines = []
    try:        # the projection comes after >= 1 s of measurement: within a few progress lines
        while len(lines) < 50 and not any("projected" in l for l in lines):
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
    finally:
        proc.kill()
        proc.wait()
    projected = [l for l in lines if "projected wall time" in l]
    assert projected and "for 1,000,000,000,000 it" in projected[0], lines
