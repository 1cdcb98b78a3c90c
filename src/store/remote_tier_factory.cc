#include "store/remote_tier_factory.h"

#include "store/redis_tier.h"
#include "store/shared_dir_tier.h"

namespace kvault {
namespace {

std::string Trim(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t") - b + 1);
}

Result<std::unique_ptr<RemoteTier>> OpenRedis(const T3Options& o) {
  RedisTierOptions ro;
  ro.seeds = SplitSeeds(o.redis_seeds);
  if (ro.seeds.empty()) return Status::InvalidArgument("cluster tier \"redis\" needs at least one seed host:port");
  ro.password = o.redis_password;
  ro.timeout_ms = o.timeout_ms;
  ro.ttl_seconds = o.ttl_seconds;
  ro.budget_bytes = o.budget_bytes;
  if (o.redis_part_bytes > 0) ro.part_bytes = o.redis_part_bytes;
  if (!o.redis_key_prefix.empty()) ro.key_prefix = o.redis_key_prefix;
  return OpenRedisTier(ro);
}

Result<std::unique_ptr<RemoteTier>> OpenSharedDir(const T3Options& o, Env* env) {
  if (o.shared_dir.empty()) return Status::InvalidArgument("cluster tier \"shared-dir\" needs a directory");
  SharedDirTierOptions so;
  so.dir = o.shared_dir;
  so.budget_bytes = o.budget_bytes;
  so.ttl_seconds = o.ttl_seconds;
  so.sync = o.shared_dir_sync;
  so.env = env;  // nullptr: Env::Default()
  return OpenSharedDirTier(so);
}

}  // namespace

std::vector<std::string> SplitSeeds(const std::vector<std::string>& seeds) {
  std::vector<std::string> out;
  for (const std::string& s : seeds) {
    size_t at = 0;
    for (;;) {
      const size_t comma = s.find(',', at);
      std::string one = Trim(s.substr(at, comma == std::string::npos ? std::string::npos : comma - at));
      if (!one.empty()) out.push_back(std::move(one));
      if (comma == std::string::npos) break;
      at = comma + 1;
    }
  }
  return out;
}

Result<std::unique_ptr<RemoteTier>> OpenRemoteTier(const T3Options& options, Env* env) {
  if (options.kind == "redis") return OpenRedis(options);
  if (options.kind == "shared-dir") return OpenSharedDir(options, env);
  if (options.kind.empty()) return Status::InvalidArgument("the cluster tier is off (no kind)");
  return Status::InvalidArgument("unknown cluster tier kind \"" + options.kind + "\" (redis or shared-dir)");
}

}  // namespace kvault
