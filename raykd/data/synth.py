"""A generated MedDialog-CN corpus in the raw txt format: the embedded default data set.

Realistic Chinese medical consultations across twelve departments, each with its own diseases,
symptoms, drugs and tests; multi-turn; with the raw format's quirks (old and new Description label
schemes, consecutive same-speaker turns, dialogues opening with the doctor, second Dialogue blocks,
Diagnosis blocks, English terms, general-domain small talk) and its file-level quirks (one year in
GBK, one with CRLF line ends, one with a UTF-8 BOM). Department frequencies are skewed, as in the
real data. Deterministic under the seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

OLD_LABELS = ("疾病：", "病情描述（发病时间、主要症状、就诊医院等）：", "曾经治疗情况和效果：", "想得到怎样的帮助：")
NEW_LABELS = ("疾病： ", "病情描述： ", "希望获得的帮助： ", "患病多久： ", "过敏史： ", "既往病史： ")
YEARS = tuple(range(2010, 2021))
GBK_YEAR, CRLF_YEAR, BOM_YEAR = 2011, 2012, 2013
NEW_SCHEME_FROM = 2016


@dataclass(frozen=True)
class Department:
    name: str
    weight: float
    diseases: tuple[str, ...]
    symptoms: tuple[str, ...]
    drugs: tuple[str, ...]
    tests: tuple[str, ...]
    advice: tuple[str, ...]


DEPARTMENTS = (
    Department("心血管内科", 14, ("高血压", "冠心病", "心律失常", "心肌炎", "心力衰竭", "房颤"),
               ("胸闷", "心慌", "胸痛", "头晕", "气短", "下肢水肿", "心跳不规律"),
               ("氨氯地平", "美托洛尔", "阿司匹林", "阿托伐他汀", "硝酸甘油", "缬沙坦"),
               ("心电图", "动态心电图 Holter", "心脏彩超", "冠脉 CTA", "血脂", "BNP"),
               ("低盐低脂饮食", "规律监测血压", "避免剧烈运动", "戒烟限酒")),
    Department("消化内科", 12, ("慢性胃炎", "胃溃疡", "反流性食管炎", "肠易激综合征", "脂肪肝", "幽门螺杆菌感染"),
               ("胃痛", "反酸", "烧心", "腹胀", "腹泻", "便秘", "恶心", "黑便"),
               ("奥美拉唑", "雷贝拉唑", "铝碳酸镁", "莫沙必利", "枸橼酸铋钾", "阿莫西林"),
               ("胃镜", "肠镜", "碳13呼气试验", "腹部 B超", "肝功能", "大便潜血"),
               ("少食多餐", "避免辛辣刺激", "饭后不要立即平卧", "按疗程服用 PPI")),
    Department("呼吸内科", 10, ("支气管炎", "肺炎", "哮喘", "慢阻肺", "肺结节", "过敏性咳嗽"),
               ("咳嗽", "咳痰", "发热", "喘息", "气促", "咽痛", "夜间咳嗽加重"),
               ("布地奈德", "沙美特罗", "孟鲁司特", "氨溴索", "左氧氟沙星", "头孢克洛"),
               ("胸部 CT", "胸片", "肺功能", "血常规", "痰培养", "过敏原检测"),
               ("注意保暖", "避免接触过敏原", "规范使用吸入剂", "多喝水")),
    Department("内分泌科", 8, ("2型糖尿病", "甲亢", "甲减", "甲状腺结节", "高尿酸血症", "骨质疏松"),
               ("口渴", "多尿", "体重下降", "乏力", "怕热多汗", "手抖", "关节红肿"),
               ("二甲双胍", "格列美脲", "胰岛素", "甲巯咪唑", "左甲状腺素", "非布司他"),
               ("空腹血糖", "糖化血红蛋白 HbA1c", "甲功五项", "甲状腺 B超", "血尿酸", "骨密度"),
               ("控制饮食", "规律运动", "定期复查血糖", "不要擅自停药")),
    Department("神经内科", 7, ("偏头痛", "脑梗塞", "帕金森病", "癫痫", "失眠症", "面神经炎"),
               ("头痛", "眩晕", "肢体麻木", "手脚无力", "失眠", "记忆力下降", "抽搐"),
               ("布洛芬", "氟桂利嗪", "阿司匹林", "左旋多巴", "丙戊酸钠", "艾司唑仑"),
               ("头颅 MRI", "头颅 CT", "脑电图", "颈动脉彩超", "经颅多普勒", "肌电图"),
               ("保证睡眠", "避免情绪激动", "按时服药", "出现症状加重及时就诊")),
    Department("皮肤科", 7, ("湿疹", "荨麻疹", "银屑病", "痤疮", "带状疱疹", "真菌感染"),
               ("皮疹", "瘙痒", "红斑", "脱屑", "水疱", "皮肤疼痛", "反复起痘"),
               ("氯雷他定", "糠酸莫米松乳膏", "阿昔洛韦", "阿达帕林凝胶", "特比萘芬", "炉甘石洗剂"),
               ("真菌镜检", "过敏原检测", "皮肤镜", "血常规", "IgE", "皮肤活检"),
               ("避免搔抓", "保持皮肤清洁干燥", "忌食海鲜", "注意防晒")),
    Department("儿科", 9, ("小儿肺炎", "手足口病", "小儿腹泻", "疱疹性咽峡炎", "小儿发热", "积食"),
               ("孩子发烧", "孩子咳嗽", "孩子拉肚子", "孩子不爱吃饭", "孩子哭闹", "嗓子有疱疹"),
               ("布洛芬混悬液", "对乙酰氨基酚", "蒙脱石散", "口服补液盐", "益生菌", "小儿氨酚黄那敏"),
               ("血常规", "C反应蛋白 CRP", "胸片", "大便常规", "支原体抗体", "咽拭子"),
               ("多给孩子喝水", "体温超过38.5度再用退烧药", "注意观察精神状态", "饮食清淡")),
    Department("妇产科", 8, ("多囊卵巢综合征", "子宫肌瘤", "阴道炎", "月经不调", "先兆流产", "宫颈炎"),
               ("月经推迟", "下腹痛", "白带异常", "阴道出血", "经量增多", "痛经"),
               ("黄体酮", "地屈孕酮", "甲硝唑", "克霉唑栓", "达英-35", "叶酸"),
               ("妇科 B超", "性激素六项", "HCG", "TCT", "HPV", "白带常规"),
               ("注意个人卫生", "按时复查", "避免劳累", "保持规律作息")),
    Department("骨科", 6, ("腰椎间盘突出", "颈椎病", "膝关节骨关节炎", "骨折", "肩周炎", "腱鞘炎"),
               ("腰痛", "颈部僵硬", "膝盖疼", "肩膀疼", "手指麻", "活动受限", "上楼梯痛"),
               ("塞来昔布", "双氯芬酸钠", "氨基葡萄糖", "甲钴胺", "乙哌立松", "骨化三醇"),
               ("腰椎 MRI", "颈椎 X线", "膝关节 MRI", "骨密度", "CT 三维重建", "肌电图"),
               ("避免久坐", "睡硬板床", "适当功能锻炼", "急性期注意休息")),
    Department("眼科", 4, ("干眼症", "结膜炎", "白内障", "青光眼", "近视", "麦粒肿"),
               ("眼睛干涩", "眼红", "视力模糊", "眼痛", "流泪", "眼睛有异物感"),
               ("玻璃酸钠滴眼液", "左氧氟沙星滴眼液", "妥布霉素地塞米松", "拉坦前列素", "阿托品滴眼液", "人工泪液"),
               ("眼压", "裂隙灯检查", "眼底检查", "OCT", "视力检查", "验光"),
               ("减少看屏幕时间", "注意用眼卫生", "不要揉眼睛", "定期复查眼压")),
    Department("耳鼻喉科", 5, ("过敏性鼻炎", "鼻窦炎", "中耳炎", "慢性咽炎", "扁桃体炎", "突发性耳聋"),
               ("鼻塞", "流鼻涕", "打喷嚏", "耳鸣", "耳朵疼", "嗓子有异物感", "听力下降"),
               ("糠酸莫米松鼻喷剂", "氮卓斯汀", "桉柠蒎", "头孢呋辛", "甲泼尼龙", "生理盐水洗鼻"),
               ("鼻内镜", "纯音测听", "声导抗", "鼻窦 CT", "喉镜", "过敏原检测"),
               ("避免接触过敏原", "坚持洗鼻", "少说话多饮水", "戒烟")),
    Department("泌尿外科", 4, ("肾结石", "前列腺增生", "尿路感染", "前列腺炎", "膀胱炎", "输尿管结石"),
               ("尿频", "尿急", "尿痛", "腰部绞痛", "血尿", "夜尿增多", "排尿困难"),
               ("坦索罗辛", "非那雄胺", "左氧氟沙星", "枸橼酸氢钾钠", "双氯芬酸钠栓", "黄酮哌酯"),
               ("泌尿系 B超", "尿常规", "PSA", "腹部 CT", "尿培养", "残余尿测定"),
               ("多饮水", "少憋尿", "避免久坐", "定期复查 B超")),
)

HOSPITALS = ("北京协和医院", "四川大学华西医院", "复旦大学附属中山医院", "中山大学附属第一医院", "浙江大学医学院附属第一医院",
             "武汉大学人民医院", "郑州大学第一附属医院", "山东省立医院", "南京鼓楼医院", "西安交通大学第一附属医院")
DURATIONS = ("两天", "三天", "一周", "半个月", "一个月", "三个月", "半年", "一年多", "好几年")
PEOPLE = ("我", "我妈妈", "我爸爸", "我老公", "我爱人", "我孩子", "我奶奶")
SMALL_TALK_PATIENT = ("谢谢医生！", "好的，谢谢您。", "医生您好，打扰了。", "今天天气挺好，顺便再问一句。",
                      "不好意思这么晚还打扰您。", "明白了，辛苦您了。", "周末医院人多吗？")
SMALL_TALK_DOCTOR = ("不客气，祝早日康复。", "您好，请详细说一下情况。", "不用客气。", "好的，有问题随时联系。",
                     "周末门诊也有，建议早点来挂号。")
ALLERGIES = ("无", "青霉素过敏", "磺胺类药物过敏", "否认药物过敏史")
HISTORIES = ("无", "高血压病史五年", "糖尿病病史", "否认慢性病史", "曾做过阑尾切除手术")


def _patient_description(r: random.Random, d: Department, disease: str, symptoms: list[str], who: str, dur: str) -> str:
    s = "，".join(symptoms)
    return r.choice((
        f"{who}最近{dur}总是{s}，在当地医院看过，说可能是{disease}。",
        f"{who}{s}已经{dur}了，之前没有在意，现在越来越严重。",
        f"{dur}前开始出现{s}，去社区医院做了{r.choice(d.tests)}，医生说要进一步检查。",
        f"{who}有{disease}，最近{s}，不知道是不是加重了。",
    ))


def _help_wanted(r: random.Random, d: Department, disease: str) -> str:
    return r.choice((
        f"想知道是不是{disease}，需要做什么检查？",
        "需要吃什么药，要不要住院？",
        f"{r.choice(d.drugs)}可以长期吃吗？有没有副作用？",
        "请医生帮忙看看下一步怎么治疗。",
    ))


def _doctor_answer(r: random.Random, d: Department, disease: str, symptoms: list[str]) -> str:
    test, drug, adv = r.choice(d.tests), r.choice(d.drugs), r.choice(d.advice)
    return r.choice((
        f"根据您描述的{symptoms[0]}，考虑{disease}的可能性大，建议先做{test}明确诊断。",
        f"可以先口服{drug}，同时{adv}，一到两周后复诊。",
        f"{symptoms[-1]}需要重视，建议尽快到{d.name}门诊就诊，做{test}。",
        f"从症状看像是{disease}，{drug}要按医嘱服用，不要自行停药，另外{adv}。",
        f"先查一下{test}和{r.choice(d.tests)}，结果出来后再决定是否用{drug}。",
    ))


def _patient_followup(r: random.Random, d: Department, disease: str, symptoms: list[str]) -> str:
    drug, test = r.choice(d.drugs), r.choice(d.tests)
    return r.choice((
        f"{test}结果出来了，医生说有点异常，需要吃{drug}吗？",
        f"吃了{drug}以后{r.choice(symptoms)}好一些了，还要继续吃多久？",
        f"{r.choice(symptoms)}晚上特别明显，会不会是{disease}加重了？",
        f"我在网上查了一下，说{disease}可以做 {r.choice(('MRI', 'CT', 'PET-CT'))}，有必要吗？",
        f"除了{drug}，还有别的药可以选择吗？",
    ))


def _dialogue_turns(r: random.Random, d: Department, disease: str, symptoms: list[str]) -> list[tuple[str, str]]:
    """Turns as (speaker label, text); sometimes opening with the doctor, sometimes with a speaker twice."""
    turns: list[tuple[str, str]] = []
    if r.random() < 0.15:
        turns.append(("医生", r.choice(SMALL_TALK_DOCTOR)))
    turns.append(("病人", _patient_followup(r, d, disease, symptoms)))
    if r.random() < 0.2:
        turns.append(("病人", r.choice(SMALL_TALK_PATIENT)))  # consecutive same-speaker turns
    turns.append(("医生", _doctor_answer(r, d, disease, symptoms)))
    for _ in range(r.randint(0, 3)):
        turns.append(("病人", _patient_followup(r, d, disease, symptoms)))
        turns.append(("医生", _doctor_answer(r, d, disease, symptoms)))
        if r.random() < 0.15:
            turns.append(("医生", r.choice(d.advice) + "。"))
    if r.random() < 0.3:
        turns.append(("病人", r.choice(SMALL_TALK_PATIENT)))
        if r.random() < 0.5:
            turns.append(("医生", r.choice(SMALL_TALK_DOCTOR)))
    return turns


def _record(r: random.Random, rid: int, year: int) -> list[str]:
    d = r.choices(DEPARTMENTS, weights=[x.weight for x in DEPARTMENTS])[0]
    disease = r.choice(d.diseases)
    symptoms = r.sample(d.symptoms, r.randint(1, 3))
    who, dur = r.choice(PEOPLE), r.choice(DURATIONS)
    lines = [f"id={rid}", f"https://www.haodf.com/doctorteam/flow_team_{r.randint(10**9, 10**10 - 1)}.htm", "",
             "Doctor faculty", f"{r.choice(HOSPITALS)}  {d.name}", "", "Description"]
    if year < NEW_SCHEME_FROM:
        values = (disease, _patient_description(r, d, disease, symptoms, who, dur),
                  r.choice(("无", f"吃过{r.choice(d.drugs)}，效果不明显。", "没有治疗过。")), _help_wanted(r, d, disease))
        labels = OLD_LABELS
    else:
        values = (disease, _patient_description(r, d, disease, symptoms, who, dur), _help_wanted(r, d, disease),
                  dur, r.choice(ALLERGIES), r.choice(HISTORIES))
        labels = NEW_LABELS
    for label, value in zip(labels, values):
        lines += [label, value]
    lines += ["", "Dialogue"]
    for speaker, text in _dialogue_turns(r, d, disease, symptoms):
        lines += [f"{speaker}：", text]
    lines.append("")
    if r.random() < 0.35:
        lines += ["Diagnosis and suggestions", f"{disease}，建议{r.choice(d.advice)}，必要时复查{r.choice(d.tests)}。", ""]
        if r.random() < 0.5:  # the conversation goes on after the diagnosis in a second Dialogue block
            lines += ["Dialogue", "病人：", _patient_followup(r, d, disease, symptoms),
                      "医生：", _doctor_answer(r, d, disease, symptoms), ""]
    return lines


def write_corpus(out: str | Path, dialogs: int, seed: int = 0) -> list[Path]:
    """Write ``dialogs`` generated consultations as raw txt files ``out/<year>.txt``.

    Returns the written paths. Years 2011 (GBK), 2012 (CRLF) and 2013 (UTF-8 BOM) carry the
    file-level quirks; years before 2016 use the old label scheme, later ones the new one.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    r = random.Random(seed)
    per_year: dict[int, list[str]] = {y: [] for y in YEARS}
    counters = {y: 0 for y in YEARS}
    for _ in range(dialogs):
        year = r.choice(YEARS)
        per_year[year] += _record(r, counters[year], year)
        counters[year] += 1
    paths = []
    for year, lines in per_year.items():
        if not lines:
            continue
        newline = "\r\n" if year == CRLF_YEAR else "\n"
        text = newline.join(lines) + newline
        if year == GBK_YEAR:
            data = text.encode("gbk")
        elif year == BOM_YEAR:
            data = "\ufeff".encode() + text.encode("utf-8")
        else:
            data = text.encode("utf-8")
        path = out / f"{year}.txt"
        tmp = path.with_suffix(".txt.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
        paths.append(path)
    return paths
