#include "openai/model_set.h"

#include <chrono>
#include <cstdio>
#include <sstream>
#include <utility>

namespace kvault::openai {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Ends a request the set holds (never given to an engine) with `status`.
void EndUnsubmitted(ModelRequest& r, Status status) {
  if (!r.done) return;
  engine::RequestResult result;
  result.status = std::move(status);
  result.prompt_tokens = static_cast<int64_t>(r.prompt.size());
  r.done(std::move(result));
}

bool Cancelled(const ModelRequest& r) { return r.params.cancel && r.params.cancel->load(std::memory_order_relaxed); }

}  // namespace

const char* ModelStateName(ModelState s) {
  switch (s) {
    case ModelState::kLoaded: return "loaded";
    case ModelState::kLoading: return "loading";
    case ModelState::kQueued: return "queued";
    case ModelState::kStored: return "stored";
    case ModelState::kSource: return "source";
  }
  return "source";
}

ModelSet::ModelSet(std::vector<ServedModel> models, ModelLoader loader, ModelSetOptions options)
    : models_(std::move(models)), loader_(std::move(loader)), options_(std::move(options)) {
  texts_.resize(models_.size());
  MutexLock lock(mu_);
  slots_.resize(models_.size());
  for (size_t i = 0; i < models_.size(); ++i) {
    ids_.push_back(models_[i].id);
    slots_[i].served = models_[i];
  }
}

ModelSet::~ModelSet() { Stop(); }

std::optional<size_t> ModelSet::Find(const std::string& id) const {
  for (size_t i = 0; i < ids_.size(); ++i) {
    if (ids_[i] == id) return i;
  }
  return std::nullopt;
}

void ModelSet::Wake() const {
  if (wakeup_) wakeup_();
}

std::shared_ptr<engine::Engine> ModelSet::MakeEngine(const ModelLoad& load) const {
  return std::make_shared<engine::Engine>(load.model, options_.engine);
}

void ModelSet::Record(Slot& s, const ModelLoad& load, double seconds) {
  s.fingerprint = load.fingerprint;
  s.description = load.description;
  s.weights_bytes = load.weights_bytes;
  s.weights_from = load.weights_from;
  s.in_store = load.in_store;
  s.last_load_s = seconds;
  ++s.loads;
  ++s.loads_by_from[load.weights_from];
  load_seconds_.Observe(seconds);
}

Status ModelSet::LoadAll(const std::function<void(const std::string&)>& progress) {
  for (size_t i = 0; i < models_.size(); ++i) {
    const ServedModel& m = models_[i];
    const bool keep = options_.max_loaded == 0 || i < options_.max_loaded;
    progress("loading model '" + m.id + "' (" + m.spec + ") [" + std::to_string(i + 1) + "/" +
             std::to_string(models_.size()) + "]");
    torch::Tensor reuse;
    {
      MutexLock lock(mu_);
      reuse = std::move(spare_arena_);
      spare_arena_ = torch::Tensor();
    }
    const auto start = Clock::now();
    Result<ModelLoad> load = Status::Unavailable("not loaded");
    std::shared_ptr<engine::Engine> engine;
    try {
      load = loader_(i, std::move(reuse));
      if (load.ok() && !load->chat) load = Status::InvalidArgument("the model has no chat template");
      if (load.ok() && keep) engine = MakeEngine(*load);
    } catch (const std::exception& e) {
      load = Status::Unavailable(e.what());
    }
    if (!load.ok()) return Status(load.status().code(), "model '" + m.id + "' (" + m.spec + "): " + load.status().message());
    const double seconds = SecondsSince(start);
    texts_[i] = {load->tokenizer, load->chat, load->add_bos};
    std::ostringstream line;
    line << "loaded model '" << m.id << "': " << load->description << " from " << load->weights_from << " in " << seconds
         << " s (" << load->weights_bytes << " weight bytes" << (keep ? ", resident" : ", not resident") << ")";
    if (!load->note.empty()) line << "; store: " << load->note;
    torch::Tensor arena = keep ? load->arena : torch::Tensor();
    if (!keep) {
      arena = std::move(load->arena);
      load->arena = torch::Tensor();
      load->model.reset();  // the weights' views go with the network
    }
    {
      MutexLock lock(mu_);
      Slot& s = slots_[i];
      Record(s, *load, seconds);
      if (keep) {
        s.engine = std::move(engine);
        s.arena = std::move(arena);
      } else if (arena.defined() && arena.use_count() == 1 && arena.storage().use_count() == 1) {
        spare_arena_ = std::move(arena);
      }
    }
    progress(line.str());
  }
  switcher_ = std::thread([this] { SwitcherLoop(); });
  return Status::OK();
}

void ModelSet::SubmitToEngineLocked(size_t index, ModelRequest request) {
  Slot& s = slots_[index];
  ++s.in_flight;
  try {
    s.engine->Submit(std::move(request.prompt), std::move(request.params),
                     [this, index, done = std::move(request.done)](engine::RequestResult result) {
                       {
                         MutexLock lock(mu_);
                         --slots_[index].in_flight;
                       }
                       cv_.notify_all();  // a draining model may be idle now
                       if (done) done(std::move(result));
                     });
  } catch (...) {
    --s.in_flight;  // never submitted: a count left behind would keep the model busy for good
    throw;
  }
}

void ModelSet::SubmitQueuedLocked(size_t index) {
  Slot& s = slots_[index];
  while (!s.queue.empty()) {
    ModelRequest r = std::move(s.queue.front().second);
    s.queue.pop_front();
    SubmitToEngineLocked(index, std::move(r));  // a cancelled one ends in the engine's next step
  }
}

void ModelSet::Submit(size_t index, ModelRequest request) {
  {
    MutexLock lock(mu_);
    Slot& s = slots_[index];
    ++s.requests;
    s.last_used = ++clock_;
    if (!stopping_) {
      if (s.engine && s.admitting && s.queue.empty()) {
        SubmitToEngineLocked(index, std::move(request));
        lock.Unlock();
        Wake();
        return;
      }
      s.queue.emplace_back(++clock_, std::move(request));
      lock.Unlock();
      cv_.notify_all();
      return;
    }
  }
  EndUnsubmitted(request, Status::Unavailable("the server is stopping"));
}

bool ModelSet::StepAll() {
  std::vector<std::shared_ptr<engine::Engine>> engines;
  {
    MutexLock lock(mu_);
    for (const Slot& s : slots_) {
      if (s.engine) engines.push_back(s.engine);
    }
  }
  bool did = false;
  for (const auto& e : engines) {
    try {
      did = e->Step() || did;
    } catch (const std::exception& ex) {  // the engine fails the requests it can; the loop goes on
      std::fprintf(stderr, "kvault serve: engine step failed: %s\n", ex.what());
    }
  }
  return did;
}

size_t ModelSet::ResidentLocked() const {
  size_t n = 0;
  for (const Slot& s : slots_) n += (s.engine != nullptr || s.loading) ? 1 : 0;
  return n;
}

size_t ModelSet::resident() const {
  MutexLock lock(mu_);
  size_t n = 0;
  for (const Slot& s : slots_) n += s.engine != nullptr ? 1 : 0;
  return n;
}

std::optional<size_t> ModelSet::NextToLoad(std::vector<ModelRequest>* dropped) {
  std::optional<size_t> best;
  uint64_t best_seq = 0;
  for (size_t i = 0; i < slots_.size(); ++i) {
    Slot& s = slots_[i];
    for (auto it = s.queue.begin(); it != s.queue.end();) {
      if (Cancelled(it->second)) {
        dropped->push_back(std::move(it->second));
        it = s.queue.erase(it);
      } else {
        ++it;
      }
    }
    if (s.engine && s.admitting && !s.queue.empty()) SubmitQueuedLocked(i);  // never left behind
    if (s.engine || s.loading || s.queue.empty()) continue;
    if (!best || s.queue.front().first < best_seq) {
      best = i;
      best_seq = s.queue.front().first;
    }
  }
  return best;
}

void ModelSet::EvictLocked(size_t index, MutexLock& lock) {
  Slot& s = slots_[index];  // slots_ never changes size: the reference outlives the unlock
  std::shared_ptr<engine::Engine> engine = std::move(s.engine);
  s.engine = nullptr;
  torch::Tensor arena = std::move(s.arena);
  s.arena = torch::Tensor();
  s.admitting = true;
  lock.Unlock(mu_);
  // The engine thread may still hold it for the rest of its round (StepAll's copy); it takes
  // no new copy, since the slot is empty now.
  while (engine.use_count() > 1) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  engine.reset();  // the engine (waits for its saves), its KV pool, then the network
  const bool free = arena.defined() && arena.use_count() == 1 && arena.storage().use_count() == 1;
  lock.Lock(mu_);
  if (free) spare_arena_ = std::move(arena);
  ReadmitDrainingLocked();  // another model that was draining stays (the room was made elsewhere)
}

bool ModelSet::ReadmitDrainingLocked() {
  bool any = false;
  for (size_t i = 0; i < slots_.size(); ++i) {
    if (slots_[i].engine && !slots_[i].admitting) {
      slots_[i].admitting = true;
      SubmitQueuedLocked(i);
      any = true;
    }
  }
  return any;
}

void ModelSet::SwitcherLoop() {
  MutexLock lock(mu_);
  while (!stopping_) {
    std::vector<ModelRequest> dropped;
    const std::optional<size_t> want = NextToLoad(&dropped);
    if (!dropped.empty()) {  // their clients left: end them without a load
      lock.Unlock(mu_);
      for (ModelRequest& r : dropped) EndUnsubmitted(r, Status::OK());
      lock.Lock(mu_);
      continue;
    }
    if (!want) {
      // Nobody waits for a load (the requests that did left): a draining model admits again.
      if (ReadmitDrainingLocked()) {
        lock.Unlock(mu_);
        Wake();
        lock.Lock(mu_);
        continue;
      }
      cv_.wait_for(lock.native(), std::chrono::milliseconds(200));  // also: a queued client may leave
      continue;
    }
    if (options_.max_loaded > 0 && ResidentLocked() >= options_.max_loaded) {
      // Room: the least recently used resident model with nothing in flight (a draining one
      // first), else the least recently used one drains.
      std::optional<size_t> idle, lru;
      for (size_t i = 0; i < slots_.size(); ++i) {
        const Slot& s = slots_[i];
        if (!s.engine) continue;
        if (!lru || s.last_used < slots_[*lru].last_used) lru = i;
        if (s.in_flight != 0) continue;
        if (!idle || (!s.admitting && slots_[*idle].admitting) ||
            (s.admitting == slots_[*idle].admitting && s.last_used < slots_[*idle].last_used)) {
          idle = i;
        }
      }
      if (idle) {
        EvictLocked(*idle, lock);
        continue;
      }
      if (!lru) {  // only loads in progress hold the room (cannot happen: one load at a time)
        cv_.wait_for(lock.native(), std::chrono::milliseconds(50));
        continue;
      }
      bool draining = false;
      for (const Slot& s : slots_) draining = draining || (s.engine && !s.admitting);
      if (!draining) slots_[*lru].admitting = false;
      cv_.wait_for(lock.native(), std::chrono::milliseconds(200));
      continue;
    }
    // Load `want` on this thread; the engine thread keeps stepping the resident engines.
    Slot& s = slots_[*want];
    s.loading = true;
    torch::Tensor reuse = std::move(spare_arena_);
    spare_arena_ = torch::Tensor();
    const ServedModel served = s.served;
    lock.Unlock(mu_);
    const auto start = Clock::now();
    Result<ModelLoad> load = Status::Unavailable("not loaded");
    std::shared_ptr<engine::Engine> engine;
    try {
      load = loader_(*want, std::move(reuse));
      if (load.ok()) engine = MakeEngine(*load);
    } catch (const std::exception& e) {
      load = Status::Unavailable(e.what());
    }
    const double seconds = SecondsSince(start);
    if (load.ok()) {
      std::fprintf(stderr, "kvault serve: switched in model '%s' from %s in %.3f s\n", served.id.c_str(),
                   load->weights_from.c_str(), seconds);
    } else {
      std::fprintf(stderr, "kvault serve: loading model '%s' failed: %s\n", served.id.c_str(),
                   load.status().ToString().c_str());
    }
    lock.Lock(mu_);
    s.loading = false;
    if (!load.ok()) {
      ++s.load_failures;
      std::deque<std::pair<uint64_t, ModelRequest>> failed;
      failed.swap(s.queue);
      lock.Unlock(mu_);
      const Status why =
          Status::Unavailable("the model '" + served.id + "' could not be loaded: " + load.status().ToString());
      for (auto& [_, r] : failed) EndUnsubmitted(r, why);
      lock.Lock(mu_);
      continue;
    }
    Record(s, *load, seconds);
    s.engine = std::move(engine);
    s.arena = std::move(load->arena);
    s.admitting = true;
    load->model.reset();
    try {
      SubmitQueuedLocked(*want);
    } catch (const std::exception& e) {  // the engine could not take a request (out of memory)
      std::fprintf(stderr, "kvault serve: submitting to model '%s' failed: %s\n", served.id.c_str(), e.what());
    }
    lock.Unlock(mu_);
    Wake();
    lock.Lock(mu_);
  }
}

void ModelSet::Stop() {
  {
    MutexLock lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (switcher_.joinable()) switcher_.join();
  std::vector<ModelRequest> ended;
  {
    MutexLock lock(mu_);
    for (Slot& s : slots_) {
      for (auto& [_, r] : s.queue) ended.push_back(std::move(r));
      s.queue.clear();
    }
  }
  for (ModelRequest& r : ended) EndUnsubmitted(r, Status::Unavailable("the server is stopping"));
}

std::vector<ModelStatus> ModelSet::Snapshot() const {
  MutexLock lock(mu_);
  std::vector<ModelStatus> out;
  out.reserve(slots_.size());
  for (const Slot& s : slots_) {
    ModelStatus m;
    m.id = s.served.id;
    m.spec = s.served.spec;
    m.fingerprint = s.fingerprint;
    m.description = s.description;
    m.state = s.engine    ? ModelState::kLoaded
              : s.loading ? ModelState::kLoading
              : !s.queue.empty() ? ModelState::kQueued
              : s.in_store       ? ModelState::kStored
                                 : ModelState::kSource;
    m.weights_bytes = s.weights_bytes;
    m.weights_from = s.weights_from;
    m.last_load_s = s.last_load_s;
    m.loads = s.loads;
    m.loads_by_from = s.loads_by_from;
    m.requests = s.requests;
    m.queued = s.queue.size();
    m.in_flight = s.in_flight;
    m.draining = s.engine != nullptr && !s.admitting;
    m.load_failures = s.load_failures;
    out.push_back(std::move(m));
  }
  return out;
}

}  // namespace kvault::openai
