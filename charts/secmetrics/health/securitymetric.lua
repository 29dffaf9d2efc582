-- Argo CD health of a SecurityMetric (resource.customizations.health.secmetrics.io_SecurityMetric).
-- Health is about the resource working: a metric that evaluates is Healthy whatever its state
-- (the state is in the message); one that cannot evaluate (invalid expression, source
-- unavailable) is Degraded; one not yet evaluated for its current spec is Progressing.
local hs = {status = "Progressing", message = "waiting for the first evaluation"}
if obj.status == nil then
  return hs
end
local generation = obj.metadata.generation or 0
if (obj.status.observedGeneration or 0) < generation then
  hs.message = "the operator has not evaluated generation " .. generation .. " yet"
  return hs
end
local ready = nil
for _, c in ipairs(obj.status.conditions or {}) do
  if c.type == "Ready" then ready = c end
end
if ready == nil then
  return hs
end
local state = obj.status.state or "Unknown"
if ready.status == "True" then
  hs.status = "Healthy"
  hs.message = state .. ": " .. (ready.message or "")
  return hs
end
-- Ready=False: no data yet is progress; anything else is a problem to fix.
if ready.reason == "NoData" then
  hs.status = "Healthy"
  hs.message = "Unknown: " .. (ready.message or "no data")
  return hs
end
hs.status = "Degraded"
hs.message = (ready.reason or "NotReady") .. ": " .. (ready.message or "")
return hs
