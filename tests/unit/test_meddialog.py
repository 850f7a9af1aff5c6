"""Parsing MedDialog-CN raw forms: every quirk of the raw formats (README, *Data*), with exact pairs, departments and texts."""

from __future__ import annotations

import json

import pytest

from raykd.data import meddialog as md

pytestmark = pytest.mark.unit

from tests.helpers.meddialog_records import NEW_RECORD_DOCTOR_FIRST, OLD_RECORD  # noqa: E402



def parse(text: str, name: str = "2010.txt"):
    items = list(md.parse_raw_txt(text.split("\n"), name))
    return [i for i in items if isinstance(i, md.Dialogue)], [i for i in items if isinstance(i, md.Skipped)]


def test_old_scheme_record_pairs_merges_and_all_dialogue_blocks():
    dialogues, skipped = parse(OLD_RECORD)
    assert skipped == []
    (d,) = dialogues
    assert d.key == "2010.txt#0" and d.department == "心血管内科"
    pairs = md.dialogue_pairs(d.turns)
    assert pairs == [
        ("高血压 头晕两周,血压160/100。 需要吃什么药? 我还有点胸闷。", "先做心电图。"),
        ("好的。 结果正常。", "可以口服氨氯地平。"),
        ("要吃多久?", "长期服用。"),
    ]


def test_new_scheme_with_trailing_spaces_and_doctor_opening():
    dialogues, skipped = parse(NEW_RECORD_DOCTOR_FIRST, "2019.txt")
    assert skipped == []
    (d,) = dialogues
    assert d.department == "消化内科" and d.key == "2019.txt#7"
    assert md.dialogue_pairs(d.turns) == [
        ("慢性胃炎 胃痛反酸一个月。 怎么治疗?", "您好,请问有黑便吗?"),
        ("没有黑便。", "建议做胃镜。"),
    ]


def test_several_records_and_department_is_last_faculty_field():
    text = OLD_RECORD + "\n" + NEW_RECORD_DOCTOR_FIRST.replace("四川大学华西医院  消化内科", "儿科")
    dialogues, skipped = parse(text)
    assert [d.key for d in dialogues] == ["2010.txt#0", "2010.txt#7"]
    assert [d.department for d in dialogues] == ["心血管内科", "儿科"]


def test_truncated_record_is_skipped_with_its_line_and_the_rest_kept():
    truncated = NEW_RECORD_DOCTOR_FIRST.rstrip("\n").rsplit("\n", 1)[0]  # ends on the speaker line "医生："
    dialogues, skipped = parse(OLD_RECORD + "\n" + truncated)
    assert [d.key for d in dialogues] == ["2010.txt#0"]
    (s,) = skipped
    assert "truncated" in s.reason and s.line == OLD_RECORD.count("\n") + 1 + truncated.count("\n") + 1


def test_record_without_dialogue_is_skipped():
    text = OLD_RECORD.split("Dialogue")[0]
    dialogues, skipped = parse(text)
    assert dialogues == [] and skipped[0].line == 1 and "no Dialogue" in skipped[0].reason


def test_not_a_meddialog_file_is_reported():
    dialogues, skipped = parse("hello\nworld\n")
    assert dialogues == [] and skipped[0].line == 1


@pytest.mark.parametrize("encoding,newline,bom", [("utf-8", "\n", False), ("utf-8", "\r\n", True),
                                                  ("gbk", "\r\n", False), ("gb2312", "\n", False)])
def test_encodings_crlf_and_bom_give_identical_pairs(tmp_path, encoding, newline, bom):
    data = OLD_RECORD.replace("\n", newline).encode(encoding)
    if bom:
        data = b"\xef\xbb\xbf" + data
    p = tmp_path / "2010.txt"
    p.write_bytes(data)
    info, dialogues = md.read_source(str(p), "txt")
    assert info.skipped == []
    assert info.encoding == {"utf-8": "utf-8-sig" if bom else "utf-8", "gbk": "gbk", "gb2312": "gbk"}[encoding]
    assert md.dialogue_pairs(dialogues[0].turns) == md.dialogue_pairs(parse(OLD_RECORD)[0][0].turns)


def test_damaged_utf8_line_drops_only_its_record_and_no_replacement_char(tmp_path):
    good = OLD_RECORD.encode("utf-8")
    bad = NEW_RECORD_DOCTOR_FIRST.encode("utf-8").replace("没有黑便".encode(), b"\xff\xfe\xfa")
    p = tmp_path / "2015.txt"
    p.write_bytes(good + b"\n" + bad)
    info, dialogues = md.read_source(str(p), "txt")
    assert [d.key for d in dialogues] == ["2015.txt#0"]
    assert info.encoding.startswith("utf-8")
    assert len(info.skipped) == 1 and "undecodable" in info.skipped[0].reason
    bad_line = (good + b"\n" + bad).split(b"\n").index(b"\xff\xfe\xfa\xe3\x80\x82") + 1
    assert info.skipped[0].line == bad_line
    assert all("\ufffd" not in t for d in dialogues for _, t in d.turns)


def test_binary_garbage_is_skipped_not_fatal(tmp_path):
    p = tmp_path / "garbage.txt"
    p.write_bytes(bytes(range(256)) * 40)
    info, dialogues = md.read_source(str(p), "txt")
    assert dialogues == [] and len(info.skipped) == 1 and info.skipped[0].file == str(p)


def test_clean_text_nfkc_controls_zero_width_replacement_and_whitespace():
    raw = "\ufeff头痛\u200b\u200d，ＡＢＣ１２３\x07\ufffd  \t多久？\u3000\n"
    assert md.clean_text(raw) == "头痛,ABC123 多久?"
    assert md.clean_text(" \u200b \x00 ") == ""


def test_empty_sides_are_dropped_and_trailing_patient_turn_unpaired():
    turns = [(md.PATIENT, "\u200b"), (md.DOCTOR, "你好"), (md.PATIENT, "问题"), (md.DOCTOR, "回答"), (md.PATIENT, "谢谢")]
    assert md.dialogue_pairs(turns) == [("问题", "回答")]


def test_processed_json_good_and_bad_elements_reported_with_lines(tmp_path):
    text = ('[\n ["病人：头痛怎么办？", "医生：多休息。"],\n {"not": "a list"},\n'
            ' ["病人:咳嗽", "医生:查血常规", "病人:好", "医生:再见"],\n ["护士：你好"]\n]\n')
    p = tmp_path / "train_data.json"
    p.write_text(text, encoding="utf-8")
    info, dialogues = md.read_source(str(p), "json")
    assert [d.key for d in dialogues] == ["train_data.json#0", "train_data.json#2"]
    assert [md.dialogue_pairs(d.turns) for d in dialogues] == [
        [("头痛怎么办?", "多休息。")], [("咳嗽", "查血常规"), ("好", "再见")]]
    assert [(s.line, "dialogue 1" in s.reason or "dialogue 3" in s.reason) for s in info.skipped] == [(3, True), (5, True)]


def test_processed_json_wrong_shape_and_truncated(tmp_path):
    p = tmp_path / "a.json"
    p.write_text('{"utterances": []}', encoding="utf-8")
    info, dialogues = md.read_source(str(p), "json")
    assert dialogues == [] and "wrong shape" in info.skipped[0].reason
    q = tmp_path / "b.json"
    q.write_text('[\n["病人：a", "医生：b"],\n["病人：c", "医', encoding="utf-8")
    info, dialogues = md.read_source(str(q), "json")
    assert len(dialogues) == 1 and info.skipped[0].line == 3


def test_hf_medical_dialog_classlabel_and_string_speakers(tmp_path):
    datasets = pytest.importorskip("datasets")
    feats = datasets.Features({
        "file_name": datasets.Value("string"), "dialogue_id": datasets.Value("int32"),
        "dialogue_url": datasets.Value("string"),
        "dialogue_turns": datasets.Sequence({"speaker": datasets.ClassLabel(names=["病人", "医生"]),
                                             "utterance": datasets.Value("string")})})
    rows = {"file_name": ["2020.txt", "2020.txt"], "dialogue_id": [2, 3], "dialogue_url": ["u", "v"],
            "dialogue_turns": [{"speaker": [0, 1], "utterance": ["孩子疝气要手术吗？", "可能是鞘膜积液。"]},
                               {"speaker": [1, 0, 0, 1], "utterance": ["您好", "咳嗽", "三天了", "多喝水"]}]}
    path = tmp_path / "hf"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows, features=feats)}).save_to_disk(str(path))
    info, dialogues = md.read_source(str(path), "hf")
    assert info.skipped == [] and [d.key for d in dialogues] == ["2020.txt#2", "2020.txt#3"]
    assert [md.dialogue_pairs(d.turns) for d in dialogues] == [[("孩子疝气要手术吗?", "可能是鞘膜积液。")],
                                                               [("咳嗽 三天了", "多喝水")]]
    plain = datasets.Dataset.from_dict({"dialogue_id": [9], "dialogue_turns": [
        [{"speaker": "病人", "utterance": "病人：腰痛"}, {"speaker": "医生", "utterance": "做 MRI"}]]})
    plain.save_to_disk(str(tmp_path / "hf2"))
    info, dialogues = md.read_source(str(tmp_path / "hf2"), "hf")
    assert dialogues[0].key == "9" and md.dialogue_pairs(dialogues[0].turns) == [("腰痛", "做 MRI")]


def test_list_sources_recursive_sorted_and_errors(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "2011.txt").write_text("x")
    (tmp_path / "2010.txt").write_text("x")
    (tmp_path / "notes.md").write_text("x")
    (tmp_path / "c.json").write_text("[]")
    got = md.list_sources([str(tmp_path)])
    assert [(p.split("/")[-1], f) for p, f in got] == [("2010.txt", "txt"), ("2011.txt", "txt"), ("c.json", "json")]
    with pytest.raises(md.RaykdError, match="no such file"):
        md.list_sources([str(tmp_path / "missing")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(md.RaykdError, match="no .txt or .json"):
        md.list_sources([str(tmp_path / "empty")])


def test_json_element_lines_are_exact_for_multiline_layout(tmp_path):
    dialogues = [["病人：问%d" % i, "医生：答%d" % i] for i in range(3)]
    p = tmp_path / "x.json"
    p.write_text(json.dumps(dialogues, ensure_ascii=False, indent=2), encoding="utf-8")
    info, got = md.read_source(str(p), "json")
    assert [d.line for d in got] == [2, 6, 10]
