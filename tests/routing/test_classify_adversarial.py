"""Hand-written hard cases for triage, none of them in the corpus: the ways patients actually write."""

from __future__ import annotations

from pathlib import Path

import pytest

from lockbox.routing.classify import classify, emergency_check

# (case, subject, body): each must come out an emergency.
EMERGENCIES = [
    # the "not" of "can't pee" negates no surgery; a relative's childhood story does not hide one happening today
    ("negation-stays-in-its-concept", "", "I can't pee at all since my operation and my belly is swollen"),
    ("relative-now", "", "my dad had a stroke when he was a kid and today his face is drooping, am I at risk too"),
    # lay words
    ("band-round-ribs", "", "there's a tight band round my ribs and I feel sick"),
    ("lips-going-blue", "", "his lips are going blue"),
    ("grandpa-smile", "grandpa", "my grandpa's smile is crooked all of a sudden"),
    ("elephant", "", "it's like an elephant sat on my chest"),
    ("cant-get-words-out", "", "she keeps trying to talk but the words won't come out right"),
    ("worst-headache", "", "worst headache I've ever had, came on like a thunderclap"),
    ("out-cold", "", "my son fell off the trampoline and was out cold for a minute"),
    # misspellings, text-speak, caps
    ("misspelt-breathe", "", "cant breth, chest realy tite"),
    ("misspelt-seizure", "", "my daugter is having a sezure"),
    ("misspelt-unconscious", "", "hes unconsious on the floor"),
    ("text-speak", "", "omg my bf passed out n wont wake up rn"),
    ("caps", "", "MY WIFE CANT MOVE HER LEFT ARM AND HER FACE IS DROOPING"),
    ("merged-words", "", "chestpain since an hour"),
    ("run-on-letters", "", "i cant breatheeeee"),
    # caregivers writing about a child or a parent
    ("caregiver-infant", "my son", "He is 3 weeks old and his temperature is 100.8"),
    ("caregiver-parent", "Dad", "My father is 80, his speech is slurred since lunch"),
    ("caregiver-poison", "", "My toddler got into the cleaning cabinet and drank some drain cleaner"),
    # buried in a long story
    (
        "buried",
        "quick update",
        "Thanks for the reminder about the flu shot clinic, we'll come Saturday. The kids are back at school and "
        "my husband started his new job, which has been a lot. The dog finally got his vaccines too. Oh, and I "
        "have had crushing pressure in my chest since this morning that goes into my jaw. Anyway, see you "
        "Saturday!",
    ),
    # negation that does not cover the emergency, and resolved episodes that still count
    ("negated-other-thing", "", "no fever, but I can't breathe"),
    ("no-reply", "", "No, I'm not better. My chest still hurts and I'm sweating."),
    ("never-before", "", "she's never had a seizure before and she just had one"),
    ("history-that-returned", "", "I had a stroke years ago and now my face is drooping again"),
    ("resolved-tia", "", "his arm went weak and his speech was slurred for 10 minutes, it's gone now"),
    ("cant-anymore", "", "I can't breathe anymore"),
    # Spanish
    ("es-no-puedo-respirar", "", "no puedo respirar"),
    ("es-me-duele-el-pecho", "", "me duele el pecho"),
    ("es-cara-caida", "", "tiene la cara caída"),
    ("es-no-accents-caps", "", "MI HIJO NO RESPIRA BIEN Y ESTA MORADO"),
    ("es-caregiver", "mi papá", "a mi papá se le durmió medio cuerpo y habla raro"),
    ("es-suicide", "", "ya no quiero vivir, me quiero matar"),
    ("es-infant", "", "mi bebé de 4 semanas tiene calentura"),
    ("es-buried", "", "Hola, gracias por la cita de ayer. Mi hija ya va mejor de la tos. Pero mi esposo se "
     "desmayó hace rato y no despierta. También quería preguntar por la factura."),
    ("es-misspelt", "", "me duele el pexo y no puedo respirar vien"),
    # worse, not gone: "has gone numb" is no resolution
    ("gone-numb", "", "my jaw aches and my left hand has gone numb, could be stress"),
    # allergy with trouble swallowing, or with hives and vomiting
    ("allergy-swallowing", "", "after the crab dip it's getting difficult to swallow"),
    ("hives-vomiting", "", "she's broken out in welts and keeps vomiting since lunch"),
    # suicide said sideways: farewells with hopelessness, a method, means and intent, a wish not to exist
    ("farewell-hopeless", "", "what's the point of anything. I gave my guitar and my things away to my brother"),
    ("method-indirect", "", "some days I think about swerving into oncoming traffic"),
    ("means-intent", "", "I have the rope in the garage and I'm ready to do it"),
    ("wish-not-alive", "", "honestly I wish I wasn't alive"),
    ("es-method", "", "a veces pienso en estrellar el carro contra un poste"),
    # testicle in slang; a cold pale foot all of a sudden; the belly with fever on the right
    ("torsion-slang", "", "woke up with horrible pain in my right ball and feel sick"),
    ("cold-limb", "", "out of nowhere my leg went cold and white and it really hurts"),
    ("appendix", "", "bad stomach ache low on the right side and a temp of 101"),
    # confusion in lay words, a bone you can see, a very high fever, a slow pulse after a double dose
    ("mixed-up", "", "grandpa has been mixed up all afternoon and keeps calling me by my mom's name"),
    ("bone-visible", "", "he fell on the glass and you can see bone in the cut"),
    ("fever-105", "", "temperature 105.2 and she's shivering"),
    ("slow-pulse", "", "took a double dose of metoprolol, my pulse is 36"),
    # overdose in chat spelling and by medicine name; a crushed limb; waters breaking; the glass test
    ("od-d", "", "pretty sure my brother OD'd, he's not making sense"),
    ("all-my-meds", "", "I swallowed all of my seroquel after dinner"),
    ("crushed-limb", "", "his hand got stuck in the conveyor and it's crushed"),
    ("waters", "", "I'm 29 weeks pregnant and there was a big gush of water when I stood up"),
    ("glass-test", "", "little red dots on his legs, I pressed a glass on them and they are still there, he's hot"),
    ("tired-of-living", "", "i'm just so tired of living"),
    ("trouble-talking", "dad", "dad has had trouble talking since lunch and his hand is clumsy"),
]

# (case, subject, body): none of these is an emergency; each mentions an emergency concept it rules out.
NOT_EMERGENCIES = [
    ("denies", "", "Patient here - I deny any shortness of breath, I just need my inhaler refilled"),
    ("anymore", "", "no chest pain anymore, thanks for adjusting my meds"),
    ("history-form", "license", "the seizures stopped years ago, I need a form for my license"),
    ("history-refill", "", "I had a heart attack in 2015 and need my statin refilled"),
    ("hypothetical", "", "what should I do if he has another seizure at school?"),
    ("thing-not-event", "", "please refill my seizure medication, I have a week left"),
    ("bill", "", "I got a bill for the ambulance ride from last year"),
    ("informational", "", "what are the warning signs of a stroke?"),
    ("negated-list", "", "no chest pain or trouble breathing, just a runny nose"),
    ("never", "", "I've never had chest pain, I just want a cholesterol check"),
    ("es-negated", "", "no tengo dolor de pecho ni me falta el aire, solo tos"),
    ("es-history", "", "tuve convulsiones de niño, necesito una carta para el trabajo"),
    ("es-resolved", "", "ya no me duele el pecho desde que tomo las pastillas"),
    ("es-bill", "", "me llegó la cuenta de la ambulancia del año pasado"),
    ("cooking-not-choking", "", "my son loves cooking dinner with me, can we talk about his diet?"),
    ("blood-pressure-not-chest-pressure", "", "my blood pressure meds make me tired, can we change them?"),
    # a report's wording, a blood thinner not taken, idioms, care already given, an old episode in Spanish words
    ("report-no-acute", "CT", "the CT said no evidence of hemorrhage, does that mean I'm fine?"),
    ("drowning-idiom", "", "drowning in paperwork for my disability claim, which form is it?"),
    ("heart-attack-idiom", "", "my teenager is giving me a heart attack, anyway can I get my statin refilled"),
    ("after-care", "", "they took me to the ER by ambulance on Friday, I'm back home now and need a follow up"),
    ("es-number-word", "", "mi papá tuvo un derrame hace tres años, necesito el formulario del seguro"),
    ("es-visit-bill", "", "¿me pueden explicar el costo de la visita a urgencias de enero?"),
    ("tired-of-living-with", "", "I'm tired of living with this knee pain, can we try something else?"),
    ("trouble-talking-to", "", "I have trouble talking to my teenager about his diabetes, any resources?"),
    ("es-course-finished", "", "me tomé todas las pastillas del antibiótico como me indicaron, ¿ya no necesito cita?"),
    # round 9's false-alarm classes: an age is no "now", a relative's childhood story told for the writer's risk, a
    # stuffy nose, fainting at a needle, a diagnosis that turned out benign, a questionnaire's question, a class
    ("age-is-not-now", "", "my mom died of a heart attack at 58 and her sister had a stroke at 62, I'm 44 now, "
     "should I get my cholesterol checked?"),
    ("relative-childhood", "", "my brother had a bad reaction to amoxicillin when he was a kid, his throat closed "
     "up and he was rushed to the hospital. Am I allergic too?"),
    ("stuffy-nose", "", "I can't breathe through my nose since this cold started, which spray is best?"),
    ("needle-faint", "", "I passed out at my blood draw last year, can I lie down this time?"),
    ("turned-out", "", "went to urgent care for chest pain and it turned out to be a pulled muscle, need a note"),
    ("questionnaire", "", "the questionnaire asked if I have thoughts of being better off dead, I said no"),
    ("es-price-idiom", "", "casi me da un infarto cuando vi lo que cuesta la cita, hay descuento?"),
]


# Hand probes written after blind round 6 (one message a line): each an emergency, or each not one.
_DATA = Path(__file__).parents[1] / "data" / "routing"


def _probes(pattern: str) -> list[str]:
    """Every line of every matching file (probe_emergencies.txt, probe_emergencies_*.txt for later rounds)."""
    return [line for path in sorted(_DATA.glob(pattern)) for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()]


PROBES = _probes("probe_emergencies*.txt")
# Calm probes the urgency model's net raises (a goodbye when moving away, white fingers in the cold): accepted, as
# the price of the net catching most of an unseen author's missed emergencies (tests/data/routing/README.md).
KNOWN_FALSE_ALARMS = set(_probes("known_false_alarms.txt"))
ALL_CALM = _probes("probe_not_emergencies*.txt")
CALM_PROBES = [line for line in ALL_CALM if line not in KNOWN_FALSE_ALARMS]


def test_the_accepted_false_alarms_are_calm_probes_and_stay_few() -> None:
    assert set(ALL_CALM) >= KNOWN_FALSE_ALARMS
    assert len(KNOWN_FALSE_ALARMS) <= 0.05 * len(ALL_CALM)


@pytest.mark.parametrize("body", PROBES, ids=[f"probe-{i:03d}" for i in range(len(PROBES))])
def test_every_probe_emergency_is_caught(body: str) -> None:
    triage = classify("", body)
    assert triage.urgency == "emergency", (body, triage.signals)


@pytest.mark.parametrize("body", PROBES, ids=[f"reply-{i:03d}" for i in range(len(PROBES))])
def test_every_probe_emergency_is_caught_in_a_reply(body: str) -> None:
    # a reply pays only for the emergency check, which must catch the same classes
    assert emergency_check(body) is not None, body


@pytest.mark.parametrize("body", CALM_PROBES, ids=[f"calm-{i:03d}" for i in range(len(CALM_PROBES))])
def test_no_calm_probe_is_an_emergency(body: str) -> None:
    triage = classify("", body)
    assert triage.urgency != "emergency", (body, triage.signals)


@pytest.mark.parametrize(("subject", "body"), [c[1:] for c in EMERGENCIES], ids=[c[0] for c in EMERGENCIES])
def test_emergency_is_caught(subject: str, body: str) -> None:
    triage = classify(subject, body)
    assert triage.urgency == "emergency", triage.signals
    assert emergency_check(f"{subject}\n{body}") is not None


@pytest.mark.parametrize(
    ("subject", "body"), [c[1:] for c in NOT_EMERGENCIES], ids=[c[0] for c in NOT_EMERGENCIES]
)
def test_negated_historical_or_hypothetical_mention_is_not_an_emergency(subject: str, body: str) -> None:
    triage = classify(subject, body)
    assert triage.urgency != "emergency", (triage.signals, triage.explanation)
    assert any(s.startswith("ctx:") for s in triage.signals) or "lex:" not in " ".join(triage.signals)


def test_a_head_bump_without_a_blood_thinner_is_urgent_not_an_emergency() -> None:
    triage = classify("", "bumped my head on the car door, I'm not taking any blood thinners, small bump")
    assert triage.urgency == "urgent", triage.signals
    assert "lex:head_injury_blood_thinner" not in triage.signals
    on_one = classify("", "bumped my head on the car door, I'm taking eliquis, small bump")
    assert on_one.urgency == "emergency" and "lex:head_injury_blood_thinner" in on_one.signals


@pytest.mark.parametrize(
    ("reply", "emergent"),
    [
        ("now I can't breathe", True),
        ("ahora no puedo respirar", True),
        ("it's getting worse, his lips are turning blue", True),
        ("thank you, see you Tuesday", False),
        ("ok I'll pick up the refill tomorrow", False),
        ("no chest pain now, feeling much better", False),
    ],
)
def test_a_reply_is_checked_for_an_emergency(reply: str, emergent: bool) -> None:
    triage = emergency_check(reply)
    assert (triage is not None) is emergent
    if triage is not None:
        assert triage.urgency == "emergency" and triage.topic == "symptoms"


@pytest.mark.parametrize(
    ("body", "topic"),
    [
        ("Can I get a refill of my metformin sent to Walgreens?", "medication"),
        ("Did my cholesterol results come back?", "results"),
        ("I need to move my appointment to next Friday", "scheduling"),
        ("Why was I charged twice for my last visit?", "billing"),
        ("I need my immunization records for my new job", "administrative"),
        ("Necesito cambiar mi cita para el martes", "scheduling"),
        ("¿Ya salieron los resultados de mi análisis de sangre?", "results"),
        ("Me cobraron dos veces la consulta", "billing"),
    ],
)
def test_topic(body: str, topic: str) -> None:
    assert classify("", body).topic == topic


@pytest.mark.parametrize(
    ("body", "language"),
    [
        ("my chest hurts", "en"),
        ("me duele el pecho", "es"),
        ("NO PUEDO RESPIRAR", "es"),
        ("Hola doctora, necesito una cita", "es"),
        ("can I get my refill?", "en"),
    ],
)
def test_language(body: str, language: str) -> None:
    assert classify("", body).language == language
