// A fixed set of threads that runs the RPC handlers' CPU-heavy work (encode, decode) off
// gRPC's callback threads.
//
// Thread-safe: Submit may be called from any thread. The destructor runs every task
// already submitted, then joins the threads; Submit after destruction has begun is a bug.
#ifndef KVSTASH_SERVER_RPC_WORKER_POOL_H_
#define KVSTASH_SERVER_RPC_WORKER_POOL_H_

#include <cstddef>
#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace kvstash::rpc {

class WorkerPool {
 public:
  // num_threads 0 means one per hardware thread (at least 1).
  explicit WorkerPool(size_t num_threads);
  ~WorkerPool();
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  // Queues `task`; it runs on one of the pool's threads, tasks start in submission order.
  void Submit(std::function<void()> task);

  size_t num_threads() const { return threads_.size(); }
  // Tasks submitted and not yet started.
  size_t queued() const;

 private:
  void Loop();
  bool HasWorkOrStopping() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  mutable absl::Mutex mu_;
  std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace kvstash::rpc

#endif  // KVSTASH_SERVER_RPC_WORKER_POOL_H_
