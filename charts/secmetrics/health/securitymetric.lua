-- Argo CD health of a secmetrics.io SecurityMetric (docs/argocd-health.md).
-- Health says whether the metric works, not whether it complies: a metric the operator
-- evaluates is Healthy in any state (Compliant, Warning, Breached), with the value and state
-- in the message. Ready=False (source unavailable, invalid expression, cost limit exceeded,
-- no data) is Degraded with the condition's reason and message. Until the operator has
-- evaluated the current generation it is Progressing. Lua 5.1, as Argo CD runs it.
local hs = {status = "Progressing", message = "Waiting for the secmetrics operator to evaluate the metric"}
local generation = obj.metadata and obj.metadata.generation
local status = obj.status
if status == nil then
  return hs
end
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.message = "Waiting for the secmetrics operator to evaluate generation " .. generation
  return hs
end
local ready = nil
if status.conditions ~= nil then
  for _, condition in ipairs(status.conditions) do
    if condition.type == "Ready" then
      ready = condition
    end
  end
end
if ready == nil or ready.status == "Unknown" then
  return hs
end
if generation ~= nil and ready.observedGeneration ~= nil and ready.observedGeneration < generation then
  return hs
end
if ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message or ""
else
  hs.status = "Degraded"
  hs.message = (ready.reason or "NotReady") .. ": " .. (ready.message or "")
end
return hs
