/* A stand-in TensorRT runtime that reports version 11.4.0 (built with the lean runtime's soname, so the plugin's
   dependency resolves to it). Its registry must never be touched by a plugin built against TensorRT 10 headers:
   getPluginRegistry aborts the process if called. Used by test_version_guard. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int32_t getInferLibVersion(void) { return 110400; }

void* getPluginRegistry(void) {
  fprintf(stderr, "stub TensorRT 11: getPluginRegistry was called by a plugin of another major version\n");
  abort();
}
