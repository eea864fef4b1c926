//! Question families, their paraphrases, and the one-word answer of a scene.
//! `action` and `direction` need the time axis; the colour families need one
//! frame; `count` needs one frame and counting.

use super::scene::{Scene, ACTIONS, COLOURS, COUNTS};

/// The question families, in the order the maker draws them.
pub const FAMILIES: [&str; 5] = ["action", "shirt_colour", "direction", "count", "object_colour"];

const ACTION_Q: [&str; 4] = [
    "What is the person doing?",
    "What is the man doing?",
    "What action does the person perform?",
    "What is happening in the video?",
];
const SHIRT_Q: [&str; 4] = [
    "What color is his shirt?",
    "What colour is the person's shirt?",
    "What is the colour of the shirt?",
    "Which color shirt is the man wearing?",
];
const DIRECTION_Q: [&str; 4] = [
    "Which way is he moving?",
    "In which direction does the person move?",
    "Is the man moving left or right?",
    "Where is the person heading?",
];
const COUNT_Q: [&str; 3] =
    ["How many objects are on the floor?", "How many things lie on the ground?", "Count the objects on the floor."];
const OBJECT_Q: [&str; 3] =
    ["What color is the ball?", "What colour is the ball on the floor?", "Which color is the ball?"];

/// `(question, answer)` of family `family` with paraphrase number `variant` (taken modulo).
pub fn ask(scene: &Scene, family: usize, variant: usize) -> (&'static str, &'static str) {
    let pick = |qs: &[&'static str]| qs[variant % qs.len()];
    match FAMILIES[family] {
        "action" => (pick(&ACTION_Q), ACTIONS[scene.action]),
        "shirt_colour" => (pick(&SHIRT_Q), COLOURS[scene.shirt].0),
        "direction" => (pick(&DIRECTION_Q), if scene.direction < 0.0 { "left" } else { "right" }),
        "count" => (pick(&COUNT_Q), COUNTS[scene.objects.len() - 1]),
        "object_colour" => (pick(&OBJECT_Q), scene.ball_colour()),
        _ => unreachable!("families are listed above"),
    }
}
