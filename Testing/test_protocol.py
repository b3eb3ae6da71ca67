"""The command line's protocol with the Slicer side (protocol.py): the command lines the jobs
build are ones the command line's own parser accepts with the meaning intended, and a progress
line survives the round trip."""

from __future__ import annotations

from LiverTumorSegLib import cli
from LiverTumorSegLib.protocol import parse_progress_line, progress_line, segment_command, train_command


def parsed(command: list[str]):
    assert command[1:3] == ["-m", "LiverTumorSegLib"]
    return cli.build_parser().parse_args(command[3:])


def test_the_segment_command_means_what_the_job_wants():
    threshold = 0.1 + 0.2  # not short in decimal: the child must get exactly this float
    args = parsed(segment_command("python", "/s/image.nrrd", "/s/tumor.nrrd", "/s/prob.nrrd", "/m/v001", threshold, 3,
                                  liver="/s/liver.nrrd"))
    assert (args.command, args.image, args.out, args.prob, args.model) == (
        "segment", "/s/image.nrrd", "/s/tumor.nrrd", "/s/prob.nrrd", "/m/v001")
    assert args.threshold == threshold and args.threads == 3 and args.progress_json and args.liver == "/s/liver.nrrd"
    assert parsed(segment_command("python", "i.nrrd", "t.nrrd", "p.nrrd", "m", 0.5, 1)).liver is None


def test_the_train_command_means_what_the_job_wants():
    args = parsed(train_command("python", "/lib", "/lib/models/v002", 2.5, 7, 3, init="/lib/models/v001", max_steps=40))
    assert (args.command, args.cases, args.out, args.init) == ("train", "/lib", "/lib/models/v002", "/lib/models/v001")
    assert (args.minutes, args.seed, args.threads, args.max_steps, args.progress_json) == (2.5, 7, 3, 40, True)
    args = parsed(train_command("python", "/lib", "/out", 5.0, 0, 1))
    assert args.init is None and args.max_steps is None


def test_progress_lines_round_trip_and_other_lines_are_not_progress():
    info = {"stage": "network", "step": 3, "total": 12, "eta_s": 4.5}
    assert parse_progress_line(progress_line(info) + "\r\n") == info
    for line in ("", "warning: no --liver mask given", "{not json}", '{"step": 1}', "[1, 2]", "3 lesion(s)"):
        assert parse_progress_line(line) is None, line
