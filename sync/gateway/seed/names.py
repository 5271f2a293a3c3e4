"""Word lists and the clinical catalogue for the synthetic data generator
(``seed.generator``).

Invariants: every list is a constant tuple in a fixed order (the generator's determinism
depends on it; append, never reorder); the names are deliberately varied — non-ASCII letters,
apostrophes, hyphens and spaces — so search, sorting and display meet real-world names; no
entry is a real person. Prison names are real establishments in England and Wales, used only
as site labels.
"""

from __future__ import annotations

# (name after "HMP", women's estate?). Order matters: the first sites of any seed are these,
# with a women's establishment among the first three.
PRISONS: tuple[tuple[str, bool], ...] = (
    ("Brixton", False),
    ("Pentonville", False),
    ("Styal", True),
    ("Leeds", False),
    ("Birmingham", False),
    ("Bronzefield", True),
    ("Wandsworth", False),
    ("Liverpool", False),
    ("Durham", False),
    ("Eastwood Park", True),
    ("Bristol", False),
    ("Cardiff", False),
    ("Swansea", False),
    ("New Hall", True),
    ("Parc", False),
    ("Berwyn", False),
    ("Lewes", False),
    ("Low Newton", True),
    ("Exeter", False),
    ("Winchester", False),
    ("Norwich", False),
    ("Foston Hall", True),
    ("Nottingham", False),
    ("Leicester", False),
    ("Lincoln", False),
    ("Downview", True),
    ("Hull", False),
    ("Doncaster", False),
    ("Wakefield", False),
    ("Send", True),
    ("Long Lartin", False),
    ("Full Sutton", False),
    ("Frankland", False),
    ("Drake Hall", True),
    ("Whitemoor", False),
    ("Garth", False),
    ("Altcourse", False),
    ("Askham Grange", True),
    ("Forest Bank", False),
    ("Oakwood", False),
    ("Bedford", False),
    ("East Sutton Park", True),
    ("Chelmsford", False),
    ("Elmley", False),
    ("Swaleside", False),
    ("Highpoint", False),
    ("Littlehey", False),
    ("Onley", False),
    ("Rye Hill", False),
    ("Stocken", False),
    ("Ranby", False),
    ("Risley", False),
    ("Haverigg", False),
    ("Preston", False),
    ("Hewell", False),
    ("Stoke Heath", False),
    ("Featherstone", False),
    ("Channings Wood", False),
    ("Guys Marsh", False),
    ("The Verne", False),
    ("Erlestoke", False),
    ("Ford", False),
    ("Coldingley", False),
    ("High Down", False),
    ("Swinfen Hall", False),
    ("Isle of Wight", False),
    ("Humber", False),
    ("Moorland", False),
    ("Northumberland", False),
    ("Holme House", False),
    ("Wealstun", False),
    ("Leyhill", False),
    ("Usk", False),
    ("Thameside", False),
    ("Belmarsh", False),
    ("Wormwood Scrubs", False),
    ("Manchester", False),
    ("Lowdham Grange", False),
    ("Ashfield", False),
    ("Peterborough", True),
)

MALE_GIVEN: tuple[str, ...] = (
    "James", "Mohammed", "Daniel", "Liam", "Connor", "Jamal", "Kwame", "Tomasz", "Łukasz",
    "Piotr", "José", "João", "Seán", "Ciarán", "Oisín", "Darren", "Wayne", "Kyle", "Jordan",
    "Ryan", "Lee", "Craig", "Dean", "Aaron", "Marcus", "Tyrone", "Ahmed", "Abdul", "Imran",
    "Raj", "Gurpreet", "Andrzej", "Mihai", "Florin", "Ionuț", "Dawid", "Jiří", "Ömer", "Emre",
    "Björn", "Søren", "François", "René", "Chinedu", "Oluwaseun", "Kofi", "Callum", "Jack",
    "Harry", "Thomas", "Michael", "Stephen", "Paul", "Mark", "Gareth", "Rhys", "Dafydd",
    "Iestyn", "Jean-Luc", "Kieran", "Shane", "Jamie", "Nathan", "Reece", "Bilal", "Yusuf",
    "Dariusz", "Vytautas", "Artūrs", "Nicolás",
)  # fmt: skip

FEMALE_GIVEN: tuple[str, ...] = (
    "Zoë", "Siobhán", "Aoife", "Niamh", "Chloé", "Renée", "Agnieszka", "Małgorzata", "Zsófia",
    "Kelly", "Stacey", "Gemma", "Jade", "Leanne", "Chantelle", "Amy", "Sarah", "Laura", "Emma",
    "Danielle", "Shannon", "Aaliyah", "Fatima", "Ayesha", "Priya", "Precious", "Chiamaka",
    "Bethan", "Sioned", "Ffion", "Joanne", "Tracey", "Nicola", "Lisa", "Michelle", "Ioana",
    "Simona", "Beatriz", "María", "Anne-Marie", "Mary-Kate", "Dominika", "Jolanta", "Roísín",
)  # fmt: skip

SURNAMES: tuple[str, ...] = (
    "Smith", "Jones", "Williams", "Taylor", "Brown", "Davies", "Evans", "Wilson", "Thomas",
    "Johnson", "Roberts", "Robinson", "Thompson", "Wright", "Walker", "White", "Edwards",
    "Hughes", "Green", "Hall", "Lewis", "Harris", "Clarke", "Patel", "Jackson", "Wood",
    "Turner", "Martin", "Cooper", "Hill", "Ward", "Morris", "Moore", "Clark", "Lee", "King",
    "Baker", "Harrison", "Morgan", "Allen", "James", "Scott", "Phillips", "Watson", "Davis",
    "Parker", "Price", "Bennett", "Young", "Griffiths", "Mitchell", "Kelly", "Cook", "Carter",
    "Richardson", "Bailey", "Collins", "Bell", "Shaw", "Murphy", "Miller", "Cox", "Richards",
    "Khan", "Marshall", "Anderson", "Simpson", "Ellis", "Adams", "Singh", "Begum", "Ali",
    "Hussain", "Ahmed", "Rahman", "O'Brien", "O'Connor", "O'Neill", "D'Souza", "McDonald",
    "MacLeod", "Smith-Jones", "Lloyd-Williams", "Hughes-Davies", "Nowak", "Kowalski",
    "Wiśniewski", "Wójcik", "Kamiński", "Lewandowski", "Dąbrowski", "Popescu", "Ionescu",
    "Ødegård", "Müller", "Schäfer", "Yılmaz", "Çelik", "Öztürk", "Nguyễn", "Okafor", "Adeyemi",
    "Mensah", "Osei", "Boateng", "Gonçalves", "Peña", "García", "Fernández", "Ó Súilleabháin",
    "Mac Giolla Phádraig", "Ní Bhriain", "Van der Merwe", "de Souza", "Jovanović", "Kovačević",
)  # fmt: skip

# Staff who sign notes (initial + surname + role); synthetic.
STAFF_ROLES: tuple[str, ...] = (
    "GP", "Nurse", "Mental health nurse", "Substance misuse worker", "Pharmacist", "Dentist",
    "Healthcare assistant", "Paramedic",
)  # fmt: skip

# --- clinical catalogue ------------------------------------------------------------------------
# Codes: SNOMED CT (http://snomed.info/sct) unless a line says otherwise. Alerts use the
# project's own code system (ALERT_SYSTEM): prison alerts such as ACCT have no national code.

# (code, display, relative weight in a prison population, medication keys treating it)
CONDITIONS: tuple[tuple[str, str, int, tuple[str, ...]], ...] = (
    ("75544000", "Opioid dependence", 22, ("methadone", "buprenorphine")),
    ("35489007", "Depressive disorder", 20, ("sertraline", "fluoxetine")),
    ("197480006", "Anxiety disorder", 14, ("sertraline",)),
    ("50711007", "Viral hepatitis type C", 8, ("sofosbuvir",)),
    ("195967001", "Asthma", 10, ("salbutamol",)),
    ("84757009", "Epilepsy", 3, ("levetiracetam", "lamotrigine")),
    ("44054006", "Diabetes mellitus type 2", 4, ("metformin",)),
    ("38341003", "Hypertensive disorder", 5, ("amlodipine",)),
    ("47505003", "Posttraumatic stress disorder", 6, ("sertraline",)),
    ("66590003", "Alcohol dependence", 9, ("thiamine",)),
    ("58214004", "Schizophrenia", 3, ("olanzapine",)),
    ("13746004", "Bipolar disorder", 2, ("olanzapine",)),
    ("406506008", "Attention deficit hyperactivity disorder", 4, ()),
    ("279039007", "Low back pain", 7, ("paracetamol",)),
    ("13645005", "Chronic obstructive lung disease", 2, ("salbutamol",)),
    ("86406008", "Human immunodeficiency virus infection", 1, ()),
)

# key -> (SNOMED substance code or "" for free text, display, product text, dosage texts)
MEDICATIONS: dict[str, tuple[str, str, str, tuple[str, ...]]] = {
    "methadone": ("387286002", "Methadone", "Methadone 1 mg/mL oral solution sugar free", (
        "60 mg once daily, supervised consumption", "45 mg once daily, supervised consumption",
        "80 mg once daily, supervised consumption",
    )),
    "buprenorphine": ("387173000", "Buprenorphine", "Buprenorphine 8 mg sublingual tablets", (
        "16 mg once daily, supervised", "8 mg once daily, supervised",
    )),
    "sertraline": ("372594008", "Sertraline", "Sertraline 50 mg tablets", (
        "50 mg once daily, in possession", "100 mg once daily, in possession",
    )),
    "fluoxetine": ("372767007", "Fluoxetine", "Fluoxetine 20 mg capsules", (
        "20 mg once daily, in possession",
    )),
    "sofosbuvir": ("", "", "Sofosbuvir 400 mg / velpatasvir 100 mg tablets", (
        "One tablet once daily for 12 weeks, supervised",
    )),
    "salbutamol": ("372897005", "Salbutamol", "Salbutamol 100 micrograms/dose inhaler", (
        "Two puffs when required, up to four times a day, in possession",
    )),
    "levetiracetam": ("387000003", "Levetiracetam", "Levetiracetam 500 mg tablets", (
        "500 mg twice daily", "750 mg twice daily",
    )),
    "lamotrigine": ("387562000", "Lamotrigine", "Lamotrigine 100 mg tablets", (
        "100 mg twice daily",
    )),
    "metformin": ("372567009", "Metformin", "Metformin 500 mg tablets", (
        "500 mg twice daily with food", "1 g twice daily with food",
    )),
    "amlodipine": ("386864001", "Amlodipine", "Amlodipine 5 mg tablets", (
        "5 mg once daily", "10 mg once daily",
    )),
    "thiamine": ("259659006", "Thiamine", "Thiamine 100 mg tablets", (
        "100 mg three times a day",
    )),
    "olanzapine": ("386849001", "Olanzapine", "Olanzapine 10 mg tablets", (
        "10 mg at night, supervised",
    )),
    "paracetamol": ("387517004", "Paracetamol", "Paracetamol 500 mg tablets", (
        "1 g up to four times a day when required (max 4 g/24 h)",
    )),
    "omeprazole": ("387137007", "Omeprazole", "Omeprazole 20 mg gastro-resistant capsules", (
        "20 mg once daily",
    )),
}  # fmt: skip

# (substance code, display, criticality, reaction (code, display))
ALLERGIES: tuple[tuple[str, str, str, tuple[str, str]], ...] = (
    ("764146007", "Penicillin", "high", ("271807003", "Eruption of skin")),
    ("764146007", "Penicillin", "high", ("39579001", "Anaphylaxis")),
    ("372687004", "Amoxicillin", "low", ("126485001", "Urticaria")),
    ("387494007", "Codeine", "low", ("422587007", "Nausea")),
    ("387207008", "Ibuprofen", "low", ("267036007", "Dyspnea")),
    ("387458008", "Aspirin", "low", ("126485001", "Urticaria")),
    ("256349002", "Peanut", "high", ("39579001", "Anaphylaxis")),
    ("111088007", "Latex", "low", ("271807003", "Eruption of skin")),
)
NO_KNOWN_ALLERGY = ("716186003", "No known allergy")

# (code in ALERT_SYSTEM, display, flag category code)
ALERTS: tuple[tuple[str, str, str], ...] = (
    ("acct-open", "ACCT open: at risk of self-harm", "safety"),
    ("self-harm-history", "History of self-harm", "safety"),
    ("violence-risk", "Risk of violence to staff: attend in pairs", "safety"),
    ("safeguarding", "Safeguarding concern", "clinical"),
    ("csra-high", "Cell sharing risk assessment: high", "safety"),
    ("vulnerable-adult", "Vulnerable adult", "clinical"),
)

# (text, SNOMED code, display, vital signs: full | some | none, note templates)
ENCOUNTERS: tuple[tuple[str, str, str, str, tuple[str, ...]], ...] = (
    ("Reception health screen", "185349003", "Encounter for check up", "full", (
        "First-night reception screen. Denies current thoughts of self-harm. {problem} noted "
        "from history. Medication reconciled with community GP record. Plan: second-night "
        "screen; refer to {team} team.",
        "Reception screen completed. Reports {problem}; community prescription confirmed by "
        "phone. Observations within normal limits. Plan: continue {medication}.",
    )),
    ("Second-night health screen", "390906007", "Follow-up encounter", "some", (
        "Second-night screen. Settled on the wing, eating and drinking. Discussed {problem}. "
        "Plan: routine review.",
    )),
    ("Substance misuse review", "390906007", "Follow-up encounter", "some", (
        "Clinical review with the substance misuse team. No signs of withdrawal (COWS < 5). "
        "Plan: continue {medication}; review in 2 weeks.",
        "Review of opioid substitution therapy. Requests dose reduction; agreed by 5 mg. "
        "Urine drug screen sent. Plan: review in 1 week.",
    )),
    ("Mental health in-reach review", "11429006", "Consultation", "none", (
        "Seen on the wing by the mental health in-reach team. Mood low but reactive; sleeping "
        "poorly. No plans or intent of self-harm. Plan: continue {medication}; ACCT review "
        "attended.",
        "Follow-up for {problem}. Engaging well, says it's \"a bit better\". Plan: review "
        "in 4 weeks.",
    )),
    ("Long-term condition review", "390906007", "Follow-up encounter", "some", (
        "Annual review of {problem}. Target BP < 140/90 discussed. Inhaler technique checked. "
        "Plan: continue {medication}; bloods in 3 months.",
    )),
    ("GP clinic", "11429006", "Consultation", "some", (
        "GP appointment for {problem}. Examination unremarkable. Plan: {medication}; "
        "safety-netting advice given; re-book if no better.",
        "Seen in clinic & reviewed medication. {problem} stable. Plan: repeat prescription.",
    )),
    ("Medication review", "11429006", "Consultation", "none", (
        "Pharmacist review. In-possession risk assessment completed. Plan: {medication} to "
        "stay supervised.",
    )),
)  # fmt: skip

# Vital signs: (LOINC code, display, UCUM unit, low, high, decimals). The blood pressure panel
# (85354-9) carries systolic (8480-6) and diastolic (8462-4) components instead of a value.
BP_PANEL = ("85354-9", "Blood pressure panel with all children optional")
BP_SYSTOLIC = ("8480-6", "Systolic blood pressure", "mm[Hg]", 100.0, 165.0, 0)
BP_DIASTOLIC = ("8462-4", "Diastolic blood pressure", "mm[Hg]", 60.0, 100.0, 0)
HEART_RATE = ("8867-4", "Heart rate", "/min", 52.0, 112.0, 0)
RESPIRATORY_RATE = ("9279-1", "Respiratory rate", "/min", 12.0, 20.0, 0)
TEMPERATURE = ("8310-5", "Body temperature", "Cel", 36.0, 37.9, 1)
SPO2 = ("59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry", "%", 94.0, 100.0, 0)
BODY_WEIGHT = ("29463-7", "Body weight", "kg", 0.0, 0.0, 1)
