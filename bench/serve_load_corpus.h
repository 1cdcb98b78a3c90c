// The text of `kvault bench serve`'s conversations: a few short documents, each with the
// questions a reader would ask about it, written for this benchmark (committed, no download).
// A session opens with one or more documents and its first question; each later turn asks the
// document's next question.
#pragma once

#include <string>
#include <vector>

namespace kvault::serve_load {

struct CorpusDocument {
  std::string title;
  std::string text;
  std::vector<std::string> questions;  // at least 6
};

// The documents, in a fixed order (never empty).
const std::vector<CorpusDocument>& Corpus();

}  // namespace kvault::serve_load
