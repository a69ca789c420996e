// Preloaded with `node --import` into a dist/ entry to emulate a non-Linux runner on this Linux machine.
const platform = process.env.CIWATCH_TEST_FAKE_PLATFORM;
if (platform) Object.defineProperty(process, 'platform', { value: platform });
