"""Sentence pools for the synthetic corpora: templates and word lists, one set per language.

Source-domain sets are monolingual (en, ko, zh). Target sets are code-switched: a Korean frame with an
English noun phrase (KECS-like ``ko-en``), a Mandarin frame with English words separated by spaces
(SEAME-like ``zh-en``), and a mixed Korean-English set (``ko-en-mixed``) where half the utterances are
monolingual and the English sits in varied places. Every word a target sentence uses also occurs in the source pools, so a model
pretrained on the source sets has trained embeddings for every target token: a real Whisper knows all
its tokens, and a toy base must too, or adapters that cannot touch embeddings cannot learn the target.
Each template has tens of thousands of fillings, so test sentences never repeat training sentences.
"""

from __future__ import annotations

import random

EN_SUBJECTS = ["I", "we", "they", "my friend", "the manager", "our team", "she", "he", "the teacher", "my brother"]
EN_VERBS = [
    "will check",
    "reviewed",
    "moved",
    "prepared",
    "cancelled",
    "shared",
    "booked",
    "updated",
    "opened",
    "finished",
    "printed",
    "started",
]
EN_ADJECTIVES = ["new", "old", "weekly", "big", "small", "final", "short", "long", "early", "late"]
# English nouns that the code-switched sets borrow: keep them in the English source pool.
EN_NOUNS = [
    "meeting",
    "code review",
    "report",
    "schedule",
    "project",
    "email",
    "deadline",
    "presentation",
    "budget",
    "design",
    "server",
    "test",
    "file",
    "update",
    "interview",
    "demo",
]
EN_PLACES = ["office", "meeting room", "cafe", "library", "school", "hotel"]
EN_TIMES = [
    "today",
    "tomorrow",
    "this morning",
    "on monday",
    "next week",
    "last night",
    "after lunch",
    "before dinner",
    "tonight",
    "on friday",
]

KO_TIMES = ["오늘", "내일", "어제", "아침에", "저녁에", "다음 주에", "지난주에", "점심 후에", "주말에", "월요일에"]
KO_SUBJECTS = ["저는", "우리는", "친구가", "팀장님이", "선생님이", "동생이", "그녀는", "그는", "우리 팀이", "엄마가"]
KO_PLACES = ["회사", "학교", "집", "회의실", "카페", "도서관", "사무실", "식당", "공원", "병원"]
KO_NOUNS = [
    "보고서",
    "회의",
    "일정",
    "과제",
    "이메일",
    "발표",
    "예산",
    "설계",
    "서버",
    "시험",
    "파일",
    "면접",
    "계획",
    "자료",
    "책",
    "가게",
]
KO_VERBS = [
    "확인했어요",
    "준비했어요",
    "취소했어요",
    "공유했어요",
    "예약했어요",
    "수정했어요",
    "열었어요",
    "끝냈어요",
    "출력했어요",
    "시작했어요",
    "확인할 거예요",
    "준비할 거예요",
]

ZH_SUBJECTS = ["我", "我们", "他", "她", "老师", "经理", "我朋友", "我哥哥", "他们", "同事"]
ZH_TIMES = ["今天", "明天", "昨天", "早上", "晚上", "下周", "上周", "周末", "中午", "下午"]
ZH_PLACES = ["在公司", "在学校", "在家", "在会议室", "在咖啡店", "在图书馆", "在办公室", "在餐厅"]
ZH_VERBS = ["检查了", "准备了", "取消了", "分享了", "预订了", "更新了", "打开了", "完成了", "打印了", "开始了"]
ZH_NOUNS = [
    "报告",
    "会议",
    "日程",
    "项目",
    "邮件",
    "演示",
    "预算",
    "设计",
    "服务器",
    "考试",
    "文件",
    "面试",
    "计划",
    "资料",
]


def _object_particle(word: str) -> str:
    """을 after a final consonant, else 를 (for Latin words, by the last letter: an approximation)."""
    last = word[-1]
    if "가" <= last <= "힣":
        return "을" if (ord(last) - 0xAC00) % 28 else "를"
    return "를" if last.lower() in "aeiouy" else "을"


def english(rng: random.Random) -> tuple[str, list[tuple[str, str]]]:
    if rng.random() < 0.5:
        text = f"{rng.choice(EN_SUBJECTS)} {rng.choice(EN_VERBS)} the {rng.choice(EN_ADJECTIVES)} {rng.choice(EN_NOUNS)} {rng.choice(EN_TIMES)}"
    else:
        text = f"{rng.choice(EN_SUBJECTS)} {rng.choice(EN_VERBS)} the {rng.choice(EN_NOUNS)} at the {rng.choice(EN_PLACES)} {rng.choice(EN_TIMES)}"
    return text, [("en", text)]


def korean(rng: random.Random) -> tuple[str, list[tuple[str, str]]]:
    noun = rng.choice(KO_NOUNS)
    text = f"{rng.choice(KO_TIMES)} {rng.choice(KO_SUBJECTS)} {rng.choice(KO_PLACES)}에서 {noun}{_object_particle(noun)} {rng.choice(KO_VERBS)}"
    return text, [("ko", text)]


def mandarin(rng: random.Random) -> tuple[str, list[tuple[str, str]]]:
    text = f"{rng.choice(ZH_SUBJECTS)}{rng.choice(ZH_TIMES)}{rng.choice(ZH_PLACES)}{rng.choice(ZH_VERBS)}{rng.choice(ZH_NOUNS)}"
    return text, [("zh", text)]


def korean_english(rng: random.Random) -> tuple[str, list[tuple[str, str]]]:
    """A Korean sentence whose object (sometimes with an adjective) or place is English."""
    time, subject, verb = rng.choice(KO_TIMES), rng.choice(KO_SUBJECTS), rng.choice(KO_VERBS)
    if rng.random() < 0.75:
        english_part = rng.choice(EN_NOUNS)
        if rng.random() < 0.3:
            english_part = f"{rng.choice(EN_ADJECTIVES)} {english_part}"
        place = rng.choice(KO_PLACES)
        segments = [
            ("ko", f"{time} {subject} {place}에서 "),
            ("en", english_part),
            ("ko", f"{_object_particle(english_part)} {verb}"),
        ]
    else:
        noun = rng.choice(KO_NOUNS)
        segments = [
            ("ko", f"{time} {subject} "),
            ("en", rng.choice(EN_PLACES)),
            ("ko", f"에서 {noun}{_object_particle(noun)} {verb}"),
        ]
    return "".join(text for _, text in segments), segments


def mandarin_english(rng: random.Random) -> tuple[str, list[tuple[str, str]]]:
    """A Mandarin sentence whose object is an English noun phrase, spaced as in SEAME transcripts."""
    english_part = rng.choice(EN_NOUNS)
    if rng.random() < 0.3:
        english_part = f"{rng.choice(EN_ADJECTIVES)} {english_part}"
    head = f"{rng.choice(ZH_SUBJECTS)}{rng.choice(ZH_TIMES)}{rng.choice(ZH_PLACES)}{rng.choice(ZH_VERBS)}"
    segments = [("zh", head), ("en", english_part)]
    return f"{head} {english_part}", segments


def korean_english_mixed(rng: random.Random) -> tuple[str, list[tuple[str, str]]]:
    """A target as real code-switching corpora are: about half the utterances monolingual Korean, the other half
    with English in varied places (the object, the place, a time phrase after the verb, or two of them), and
    half of all sentences in frames the source pools never use (no place, or the place before the subject).
    Every word keeps a position it has in the source pools (a sentence starts with a Korean time word; an
    English time phrase follows a space), so every output token of the target occurs in the source training
    text and a base pretrained here has trained embeddings for it."""
    time, subject, verb, noun = (
        rng.choice(KO_TIMES),
        rng.choice(KO_SUBJECTS),
        rng.choice(KO_VERBS),
        rng.choice(KO_NOUNS),
    )
    place = rng.choice(KO_PLACES)
    obj = f"{noun}{_object_particle(noun)}"
    english_object = rng.choice(EN_NOUNS)
    if rng.random() < 0.3:
        english_object = f"{rng.choice(EN_ADJECTIVES)} {english_object}"
    if rng.random() < 0.5:  # monolingual Korean, in the source frame or in a new one
        frame = rng.randrange(3)
        if frame == 0:
            return korean(rng)
        text = f"{time} {subject} {obj} {verb}" if frame == 1 else f"{time} {place}에서 {subject} {obj} {verb}"
        return text, [("ko", text)]
    switch = rng.randrange(4)
    if switch == 0:  # the English object, without a place
        segments = [
            ("ko", f"{time} {subject} "),
            ("en", english_object),
            ("ko", f"{_object_particle(english_object)} {verb}"),
        ]
    elif switch == 1:  # an English place before the subject
        segments = [("ko", f"{time} "), ("en", rng.choice(EN_PLACES)), ("ko", f"에서 {subject} {obj} {verb}")]
    elif switch == 2:  # an English time phrase after the verb
        segments = [("ko", f"{time} {subject} {place}에서 {obj} {verb} "), ("en", rng.choice(EN_TIMES))]
    else:  # two switches: an English place and the English object
        segments = [
            ("ko", f"{time} {subject} "),
            ("en", rng.choice(EN_PLACES)),
            ("ko", "에서 "),
            ("en", english_object),
            ("ko", f"{_object_particle(english_object)} {verb}"),
        ]
    return "".join(text for _, text in segments), segments


SENTENCE_MAKERS = {
    "en": english,
    "ko": korean,
    "zh": mandarin,
    "ko-en": korean_english,
    "zh-en": mandarin_english,
    "ko-en-mixed": korean_english_mixed,
}
