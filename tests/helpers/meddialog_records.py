"""Raw MedDialog-CN records with the quirks the parser must handle (shared by the parsing and preparation tests)."""

OLD_RECORD = """id=0
https://www.haodf.com/doctorteam/flow_team_1.htm

Doctor faculty
北京协和医院  心血管内科

Description
疾病：
高血压
病情描述（发病时间、主要症状、就诊医院等）：
头晕两周，血压160/100。
曾经治疗情况和效果：
无
想得到怎样的帮助：
需要吃什么药？

Dialogue
病人：
我还有点胸闷。
医生：
先做心电图。
病人：
好的。
病人：
结果正常。
医生：
可以口服氨氯地平。

Diagnosis and suggestions
高血压，低盐饮食。

Dialogue
病人：
要吃多久？
医生：
长期服用。
"""

NEW_RECORD_DOCTOR_FIRST = """id=7
https://www.haodf.com/doctorteam/flow_team_2.htm

Doctor faculty
四川大学华西医院  消化内科

Description
疾病： 
慢性胃炎
病情描述： 
胃痛反酸一个月。
希望获得的帮助： 
怎么治疗？
患病多久： 
一个月
过敏史： 
无
既往病史： 
无

Dialogue
医生：
您好，请问有黑便吗？
病人：
没有黑便。
医生：
建议做胃镜。
"""
