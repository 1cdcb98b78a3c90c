#include "serve_load_corpus.h"

namespace kvault::serve_load {

const std::vector<CorpusDocument>& Corpus() {
  static const std::vector<CorpusDocument> kCorpus = {
      {"The harbour lighthouse",
       "The lighthouse at the north end of the harbour was built in 1871 from granite quarried two miles "
       "inland. Its tower is thirty-four metres tall and tapers from nine metres across at the base to four "
       "at the gallery. For its first sixty years the light came from a paraffin lamp inside a first-order "
       "lens made of one hundred and twelve glass prisms; the lens turned on a bath of mercury, driven by a "
       "clockwork weight that a keeper wound every four hours through the night. Three keepers lived in the "
       "cottages at the foot of the tower and shared the watches. In 1932 the lamp was replaced by an electric "
       "bulb of one thousand watts, and the clockwork by a small motor, but the keepers stayed until 1989, "
       "when the light was made automatic and watched from the mainland by radio. The light flashes white "
       "twice every fifteen seconds and can be seen from twenty-two nautical miles in clear weather. In fog "
       "a horn sounds once every thirty seconds. The worst night in the station's log is the storm of "
       "February 1903, when waves broke over the gallery, the lens room flooded to the knee, and the keepers "
       "kept the lamp alight by carrying paraffin up the stairs in buckets until morning. Today the cottages "
       "hold a small museum with the old clockwork, the keepers' logbooks and a model of the lens, and the "
       "tower is open to visitors on summer weekends.",
       {"When was the lighthouse built, and what is it made of?",
        "How was the lens turned before the electric motor?",
        "How many keepers lived at the station, and until when?",
        "What is the light's pattern and how far can it be seen?",
        "What happened during the storm of February 1903?",
        "What can visitors see at the station today?",
        "Summarize the history of the lighthouse in three sentences."}},
      {"Baking a sourdough loaf",
       "A sourdough loaf rises on wild yeast and lactic bacteria kept alive in a starter of flour and water. "
       "A healthy starter doubles in four to eight hours after a feeding at room temperature; a starter that "
       "does not double needs two or three feedings a day until it does. The dough in this recipe is five "
       "hundred grams of bread flour, three hundred and fifty grams of water, one hundred grams of active "
       "starter and ten grams of salt. Mix the flour and water first and let them rest for forty minutes, "
       "which lets the flour absorb the water and makes the dough easier to stretch. Then add the starter and "
       "the salt and squeeze them through the dough by hand. During the next three hours, fold the dough over "
       "itself four times, once every thirty minutes, and leave it alone afterwards until it has grown by about "
       "half. Shape it into a tight ball, put it seam side up in a floured basket and leave it in the "
       "refrigerator overnight; the cold slows the yeast and lets the bacteria make more of the sour taste. "
       "Bake it the next morning in a covered pot heated to two hundred and fifty degrees Celsius: twenty "
       "minutes with the lid on, which keeps the steam in and lets the loaf spring, then twenty-five minutes "
       "with the lid off at two hundred and thirty degrees until the crust is deep brown. Let the loaf cool "
       "for an hour before cutting it, because the crumb is still setting.",
       {"What makes a sourdough loaf rise?",
        "How do you know a starter is healthy?",
        "What are the amounts of flour, water, starter and salt?",
        "Why does the dough rest before the starter is added?",
        "Why does the shaped loaf spend the night in the refrigerator?",
        "How is the loaf baked, and why is the pot covered at first?",
        "List the steps of the recipe in order, in one line each."}},
      {"The river survey",
       "Every spring a team of volunteers surveys twelve kilometres of the river between the old mill and "
       "the estuary. They divide the river into twenty-four stretches of five hundred metres and record in "
       "each the water temperature, its clarity measured with a white disc lowered until it disappears, the "
       "number of mayfly and stonefly larvae found under ten stones, and any otter tracks on the banks. "
       "Mayfly and stonefly larvae need clean, oxygen-rich water, so their numbers are the survey's main "
       "sign of the river's health. In the first survey, twelve years ago, the lower eight stretches had "
       "almost no larvae, and the disc disappeared at thirty centimetres. After a sewage outflow near the "
       "town was closed and farmers planted strips of grass and trees along four kilometres of bank, the "
       "larvae returned to all but two stretches, and last spring the disc could be seen at ninety "
       "centimetres. Otter tracks, absent for decades, were first found six years ago and have been found "
       "every year since, in up to nine stretches. The two stretches that are still poor lie below a road "
       "bridge where runoff from the road enters the river after rain. The team has asked the council to "
       "build a settling pond there, and plans to survey those stretches again after every heavy rain this "
       "year to show how much the runoff matters.",
       {"What does the survey measure in each stretch of the river?",
        "Why are mayfly and stonefly larvae counted?",
        "What did the first survey find in the lower stretches?",
        "What changes improved the river, and how much did clarity improve?",
        "What is known about the otters?",
        "Why are two stretches still poor, and what does the team propose?",
        "Write a short report of the survey's findings for the council."}},
      {"The library's lending rules",
       "The town library lends books for three weeks and films and music for one week. A member may borrow "
       "up to fifteen items at a time, of which at most five may be films. Any item can be renewed twice, "
       "online or at the desk, unless another member has reserved it; a reserved item must come back on its "
       "due date. Reservations cost nothing and the member is sent a message when the item is ready; it is "
       "then kept at the desk for seven days. The library charges no fines for children's books. For other "
       "items the fine is twenty cents a day, up to a limit of five euros per item, and a member who owes "
       "more than ten euros cannot borrow until the fines are paid. An item that is not returned within "
       "six weeks of its due date is counted as lost, and the member is charged its replacement price; the "
       "charge is cancelled if the item is returned within a year. Members may also borrow from the other "
       "libraries of the county: such loans take about a week to arrive, cost one euro each and follow the "
       "lending library's rules. The library is open from nine to eight on weekdays and from ten to four on "
       "Saturdays, and its return box by the entrance can be used at any hour; items dropped there are "
       "checked in the next morning.",
       {"How long may books, films and music be borrowed?",
        "How many items may a member borrow, and how many of them may be films?",
        "When can an item not be renewed?",
        "How do fines work, and when does a member lose the right to borrow?",
        "What happens when an item is not returned at all?",
        "How do loans from other libraries of the county work?",
        "Explain the rules to a new member in a short paragraph."}},
  };
  return kCorpus;
}

}  // namespace kvault::serve_load
