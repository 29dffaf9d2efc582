-- Argo CD health of a MetricPolicy (resource.customizations.health.secmetrics.io_MetricPolicy).
-- Healthy when the operator reconciled the current spec and the policy is Ready (whether the
-- metrics are compliant is in the message); Degraded when it is not Ready (missing metrics,
-- invalid selector, webhook not allowed); Progressing until the current spec is reconciled.
local hs = {status = "Progressing", message = "waiting for the first reconcile"}
if obj.status == nil then
  return hs
end
local generation = obj.metadata.generation or 0
if (obj.status.observedGeneration or 0) < generation then
  hs.message = "the operator has not reconciled generation " .. generation .. " yet"
  return hs
end
for _, c in ipairs(obj.status.conditions or {}) do
  if c.type == "Ready" then
    if c.status == "True" then
      hs.status = "Healthy"
      hs.message = (obj.status.state or "Unknown") .. ": " .. (c.message or "")
    else
      hs.status = "Degraded"
      hs.message = (c.reason or "NotReady") .. ": " .. (c.message or "")
    end
    return hs
  end
end
return hs
