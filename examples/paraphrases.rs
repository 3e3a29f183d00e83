//! Memories and the questions that need them, written to share no keyword (the retrieval
//! benchmark checks), so only meaning connects them; and distractors, about other things.

/// (memory, question).
pub const PAIRS: &[(&str, &str)] = &[
    (
        "User prefers email over SMS",
        "How does the customer want to be contacted?",
    ),
    (
        "Allergic to peanuts",
        "Which foods could cause a dangerous reaction?",
    ),
    (
        "Lives in Lisbon, Portugal",
        "Where is this person's home city?",
    ),
    (
        "Works as a nurse at the children's hospital",
        "What is their job?",
    ),
    (
        "Has two cats named Miso and Tofu",
        "Does the client own any pets?",
    ),
    (
        "Is vegetarian and never eats meat",
        "What diet do they follow?",
    ),
    ("Birthday is on March 3rd", "When were they born?"),
    (
        "Speaks Spanish and French fluently",
        "Which languages can they talk in?",
    ),
    ("Drives a red Tesla Model 3", "What car do they own?"),
    (
        "Afraid of flying, always takes the train",
        "How do they usually travel long distances?",
    ),
    (
        "Pays for the premium plan annually",
        "Which subscription tier is the account on?",
    ),
    (
        "Prefers dark mode in every app",
        "What screen theme should the interface use?",
    ),
    (
        "Is learning to play the cello",
        "Which musical instrument are they studying?",
    ),
    (
        "Runs a marathon every spring",
        "What sport does this person practice?",
    ),
    (
        "Has a daughter starting university in September",
        "Do they have kids?",
    ),
    (
        "Works remotely from home three days a week",
        "Where does the person do their office job?",
    ),
    (
        "Favorite cuisine is Japanese, especially sushi",
        "What food do they enjoy most?",
    ),
    (
        "Gets migraines when staring at screens too long",
        "Any health issues related to computer use?",
    ),
    (
        "Moved from Toronto to Berlin last year",
        "Where did they relocate recently?",
    ),
    (
        "Wants a refund for the broken headphones",
        "Why is the customer unhappy with the purchase?",
    ),
    (
        "Password was reset yesterday after a lockout",
        "Did they have trouble logging in?",
    ),
    (
        "Celebrates a wedding anniversary in June",
        "When did they get married?",
    ),
    (
        "Reads mystery novels before bed",
        "What books do they like?",
    ),
    (
        "Plays chess online every evening",
        "What game do they enjoy at night?",
    ),
    (
        "Is saving money to buy a house",
        "What are their financial goals?",
    ),
    (
        "Is colorblind and struggles with red and green",
        "Do they have any vision problems?",
    ),
    (
        "Grew up on a farm in Iowa",
        "Where did they spend their childhood?",
    ),
    (
        "Hates phone calls and replies only by text message",
        "Which communication channel should we avoid?",
    ),
    (
        "Flight to Tokyo leaves on Friday morning",
        "When is the upcoming trip to Japan?",
    ),
    (
        "Is a night owl who rarely wakes before noon",
        "What time does this person usually get up?",
    ),
    (
        "Volunteers at the animal shelter on weekends",
        "How do they spend Saturdays and Sundays?",
    ),
    (
        "Takes insulin for type 1 diabetes",
        "What medication does the patient need?",
    ),
    (
        "Bought a standing desk for back pain",
        "Which furniture purchase helped their posture?",
    ),
];

/// About none of the questions.
pub const DISTRACTORS: &[&str] = &[
    "Ordered a blue sweater in size medium",
    "The meeting with the accountant is on Tuesday",
    "Asked about the return policy for shoes",
    "Their router firmware needs an update",
    "Left a five-star review for the delivery driver",
    "Uses a MacBook Air for school work",
    "Parcel was delivered to the wrong address once",
    "Likes the color orange for the logo",
    "Signed the lease for the new office",
    "Requested an invoice in PDF format",
    "The printer on the second floor is jammed",
    "Watches football on Sunday nights",
    "Is building a treehouse with a neighbour",
    "Their favourite season is autumn",
    "Keeps a vegetable garden with tomatoes",
    "Bought concert tickets for a jazz band",
    "Is allergic to nothing they know of",
    "Painted the kitchen walls yellow",
];
