"""Mail stores read one message at a time: mbox (plain and gzip'd), Maildir, .eml."""

import gzip

import pytest

from spfmilter.replay import stores
from tests.kit import mailstore as ms

MESSAGES = [ms.simple(subject=f"n{i}", msgid=f"<{i}@bank.test>",
                      body="From the start of a line.\r\n>From quoted already.\r\nend\r\n")
            for i in range(5)]


def _lf(raw: bytes) -> bytes:
    return raw.replace(b"\r\n", b"\n")


@pytest.mark.parametrize("gzipped", [False, True])
def test_mbox_gives_each_message_as_it_was_delivered(tmp_path, gzipped):
    path = ms.write_mbox(tmp_path / ("box.gz" if gzipped else "box"), MESSAGES, gzipped)
    got = list(stores.read(str(path)))
    assert [m.source for m in got] == [f"{path}:{i}" for i in range(1, 6)]
    assert [m.raw for m in got] == [_lf(m) for m in MESSAGES]


def test_maildir_reads_new_and_cur_in_a_stable_order(tmp_path):
    path = ms.write_maildir(tmp_path / "Maildir", MESSAGES)
    got = list(stores.read(str(path)))
    assert sorted(m.raw or b"" for m in got) == sorted(_lf(m) for m in MESSAGES)
    assert [m.source for m in got] == [m.source for m in stores.read(str(path))]
    assert [m.source.split("/")[-2] for m in got] == ["new", "new", "cur", "cur", "cur"]


def test_a_single_message_file(tmp_path):
    eml = tmp_path / "one.eml"
    eml.write_bytes(MESSAGES[0])
    assert [(m.source, m.raw) for m in stores.read(str(eml))] == [(str(eml), MESSAGES[0])]


def test_mbox_is_read_lazily(tmp_path):
    """The first message is given before the rest of the file is read: a corrupt end
    is only met after the messages before it."""
    path = tmp_path / "box.gz"
    data = ms.mbox_bytes(MESSAGES)
    path.write_bytes(gzip.compress(data)[:-30])    # truncated stream
    got = []
    with pytest.raises(stores.StoreError):
        for message in stores.read(str(path)):
            got.append(message)
    assert got and got[0].raw == _lf(MESSAGES[0])


def test_a_missing_path_or_a_folder_that_is_no_maildir_is_a_one_line_error(tmp_path):
    with pytest.raises(stores.StoreError, match="missing: No such file"):
        list(stores.read(str(tmp_path / "missing")))
    (tmp_path / "plain").mkdir()
    with pytest.raises(stores.StoreError, match="plain: a folder that is not a Maildir"):
        list(stores.read(str(tmp_path / "plain")))


def test_a_file_not_starting_with_a_from_line_is_one_message(tmp_path):
    path = tmp_path / "x.mbox"
    path.write_bytes(b"Subject: x\n\nFrom a b\n\nbody\n")
    assert [m.raw for m in stores.read(str(path))] == [path.read_bytes()]


def test_an_oversized_message_is_flagged_not_held(tmp_path, monkeypatch):
    monkeypatch.setattr(stores, "MAX_MESSAGE", 1000)
    big = ms.simple(body="x" * 5000 + "\r\n")
    path = ms.write_mbox(tmp_path / "box", [big, MESSAGES[0]])
    got = list(stores.read(str(path)))
    assert [m.raw for m in got] == [None, _lf(MESSAGES[0])]


def test_a_gzipped_single_message(tmp_path):
    path = tmp_path / "one.eml.gz"
    path.write_bytes(gzip.compress(MESSAGES[1]))
    assert [(m.source, m.raw) for m in stores.read(str(path))] == [(str(path), MESSAGES[1])]
