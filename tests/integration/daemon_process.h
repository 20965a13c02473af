// Runs the real kvstashd binary as a child process for integration tests: port 0 on
// 127.0.0.1, a ready file in a private temporary directory, logs captured to files there.
//
// Thread-compatible: one test thread owns a DaemonProcess.
#ifndef KVSTASH_TESTS_INTEGRATION_DAEMON_PROCESS_H_
#define KVSTASH_TESTS_INTEGRATION_DAEMON_PROCESS_H_

#include <sys/types.h>

#include <chrono>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace kvstash::testing {

class DaemonProcess {
 public:
  DaemonProcess() = default;
  DaemonProcess(const DaemonProcess&) = delete;
  DaemonProcess& operator=(const DaemonProcess&) = delete;
  // Kills the daemon (SIGKILL) if it still runs and removes the temporary directory.
  ~DaemonProcess();

  // Starts `binary --listen 127.0.0.1:0 --ready-file DIR/ready <extra_args>` and waits up to
  // `timeout` for the ready file. Unavailable (with the daemon's log) if it exits or is
  // not ready in time.
  absl::Status Start(const std::string& binary, const std::vector<std::string>& extra_args,
                     std::chrono::milliseconds timeout = std::chrono::seconds(30));

  // Sends SIGTERM and waits up to `timeout`; returns the exit status (-1 for a signal
  // death or timeout, after which it is SIGKILLed).
  int Stop(std::chrono::milliseconds timeout = std::chrono::seconds(30));

  const std::string& address() const { return address_; }  // "127.0.0.1:PORT"
  const std::string& dir() const { return dir_; }           // private temp dir
  std::string Log() const;   // stdout + stderr so far
  std::string Stdout() const;
  bool running() const { return pid_ > 0; }
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
  std::string dir_;
  std::string address_;
};

}  // namespace kvstash::testing

#endif  // KVSTASH_TESTS_INTEGRATION_DAEMON_PROCESS_H_
